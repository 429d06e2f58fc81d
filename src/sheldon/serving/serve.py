"""The repository's tracking store, opened to people and programs, on 127.0.0.1:

    python -m sheldon.serving.serve model [--port 5001] [--max-request-mb 32]   # make serve: the champion
    python -m sheldon.serving.serve ui [--port 5000]                            # make ui: the MLflow UI

`model` serves `models:/<evaluate.registered_model_name>@champion` with MLflow's scoring server
(what `mlflow models serve --env-manager local` runs) inside `BoundedRequests`: a body over the
limit is answered 413 unread, and an error quotes no more than the start of the input. With no
champion yet, it stops with one line instead of MLflow's traceback. `ui` first saves the runs view
it opens on and prints its URL (sheldon/serving/runs_view.py). Both read the store `make run` writes (or
MLFLOW_TRACKING_URI)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sheldon.core.errors import StepError
from sheldon.core.processes import use_this_python
from sheldon.serving.registry import champion_uri
from sheldon.serving.runs_view import open_runs_view
from sheldon.step.store import check_tracking_store, tracking_environment
from sheldon.step.tracking import configured

HOST = "127.0.0.1"
MAX_REQUEST_MB = 32.0  # ~8,000 images of 28x28 as JSON; a larger batch is sent in parts
LONG_ERROR = 4096  # bytes: an error body longer than this has its long strings cut...
QUOTED = 1000  # ...to their first characters (MLflow's 400 for a body that is no JSON quotes it whole)


class BoundedRequests:
    """ASGI middleware around MLflow's scoring app. A request body over `max_bytes` is answered
    413 with one line and never kept: its Content-Length says so before it is read (and a client
    waiting for 100 Continue sends none of it), a chunked one is kept no further than the limit.
    An error's body over LONG_ERROR bytes has each string cut to QUOTED characters, so that a
    message quoting the input quotes its start only."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is None:  # chunked (or no body): read up to the limit, then hand the app that
            body = await self._read(receive)
            if body is None:
                await self._too_large(send, "")
                return
            receive = _replay(body, receive)
        elif int(length) > self.max_bytes:  # h11 has checked that it is a number
            if headers.get(b"expect", b"").lower() != b"100-continue":  # else the body is never sent
                await _drain(receive)
            await self._too_large(send, f" ({int(length):,} bytes)")
            return
        await self.app(scope, receive, _shortening_errors(send))

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it is over the limit (the rest read and dropped)."""
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _drain(receive, message)
                return None
            if not message.get("more_body", False):
                return bytes(body)

    async def _too_large(self, send: Send, size: str) -> None:
        limit = f"{self.max_bytes / 1e6:g} MB"
        message = (
            f"the request body{size} is over this server's limit of {limit}: send fewer images a request "
            "(or serve with a larger --max-request-mb)"
        )
        await _send_json(send, 413, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": message})


async def _drain(receive: Receive, message: Message | None = None) -> None:
    """Read the rest of a request's body, keeping none of it: a client that sends its whole body
    before it reads the answer (most do) would find the connection reset, the answer unread."""
    while message is None or message.get("more_body", False):
        message = await receive()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` first, then what `receive` gives (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _shortening_errors(send: Send) -> Send:
    """A send that holds an error response (status 400 and over) until its body is whole, and
    sends it shortened by `shortened`; other responses go through as they come."""
    start: Message | None = None
    body = bytearray()

    async def shortening(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
        elif start is not None and message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                short = shortened(bytes(body))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(short)).encode())]})
                await send({"type": "http.response.body", "body": short})
        else:
            await send(message)

    return shortening


def shortened(body: bytes) -> bytes:
    """An error's body, its strings (its JSON's, or the whole text) cut to their first QUOTED
    characters when it is over LONG_ERROR bytes."""
    if len(body) <= LONG_ERROR:
        return body
    try:
        error = json.loads(body)
    except ValueError:
        error = None
    if not isinstance(error, dict):
        return _cut(body.decode("utf-8", errors="replace")).encode()
    cut = {key: _cut(value) if isinstance(value, str) else value for key, value in error.items()}
    return json.dumps(cut).encode()


def _cut(text: str) -> str:
    return text if len(text) <= QUOTED else f"{text[:QUOTED]}... ({len(text) - QUOTED:,} characters more)"


async def _send_json(send: Send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _store() -> str:
    """The tracking store's URI, checked (StepError with one line when it cannot be used)."""
    uri = tracking_environment()
    check_tracking_store(uri)
    return uri


def serve_model(port: int, max_request_mb: float) -> None:
    """Serve the champion on HOST:port until stopped (Ctrl-C); StepError when there is none."""
    import mlflow

    mlflow.set_tracking_uri(_store())
    model = champion_uri(str(configured("evaluate").get("registered_model_name", "")))
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from sheldon.serving.predict import load_model

    app = BoundedRequests(scoring_server.init(load_model(model)), int(max_request_mb * 1e6))
    print(f"serving {model} on http://{HOST}:{port}/invocations", flush=True)
    uvicorn.run(app, host=HOST, port=port)


def ui_command(port: int) -> list[str]:
    """The mlflow command that serves the UI on HOST:port, once the runs view it opens on is
    saved (sheldon/serving/runs_view.py) and its URL printed."""
    import mlflow

    uri = _store()
    mlflow.set_tracking_uri(uri)
    experiment, sweep = str(configured("main").get("experiment_name", "")), configured("sweep")
    url = open_runs_view(
        f"http://{HOST}:{port}", experiment, str(sweep["metric"]), sweep["direction"] == "maximize"
    )
    print(f"MLflow UI: {url}", flush=True)
    use_this_python()  # mlflow from this interpreter's environment
    return ["mlflow", "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sheldon.serving.serve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("what", choices=["model", "ui"])
    parser.add_argument("--port", type=int, default=None, help="default: 5001 (model), 5000 (ui)")
    parser.add_argument(
        "--max-request-mb",
        type=float,
        default=MAX_REQUEST_MB,
        help=f"model: a request body over this many MB is answered 413 (default: {MAX_REQUEST_MB:g})",
    )
    args = parser.parse_args(argv)
    if args.max_request_mb <= 0:
        parser.error("--max-request-mb must be more than 0")
    try:
        if args.what == "model":
            serve_model(args.port or 5001, args.max_request_mb)
            return
        served = ui_command(args.port or 5000)
    except StepError as err:
        sys.exit(f"error: {err}")
    os.execvp(served[0], served)  # the UI itself, in this process: Ctrl-C stops it


if __name__ == "__main__":
    main()
