"""A team's tracking server on 127.0.0.1 (docs/how-to/share-a-team-server.md):

    python -m sheldon.serving.server [--port 5000] [--db URI] [--artifacts s3://bucket/prefix]   # make server

`mlflow server` with a database backend store (`--db`) and an S3 bucket for artifacts
(`--artifacts`), which the server proxies: members set MLFLOW_TRACKING_URI to it and need no
object-store credentials of their own. The server's come from the environment (AWS_ACCESS_KEY_ID
and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; AWS_ENDPOINT_URL for an S3-compatible store), and the
bucket and the db are checked before it starts, each failure in one line.

With neither credentials nor an endpoint in the environment it sets up a server to try on this
machine: moto's S3 server stands in for the object store (with a bucket for artifacts and one for
a DVC remote), and the db is a temporary one, because moto keeps objects in memory: runs and their
artifacts last as long as the server does."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sheldon.core.errors import StepError
from sheldon.core.paths import REPO_ROOT
from sheldon.core.processes import Interrupted, raise_on_signals, stop_step
from sheldon.step.store import check_artifact_location, check_tracking_store, s3_endpoint

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
ARTIFACTS = "s3://sheldon-artifacts/mlflow"
DATA_REMOTE = "s3://sheldon-data/dvc"  # the stand-in's bucket for a DVC remote
STAND_IN_KEYS = {"AWS_ACCESS_KEY_ID": "sheldon", "AWS_SECRET_ACCESS_KEY": "sheldon-stand-in"}
START_S = 120  # a new db and uvicorn's workers: ~10 s here, more on a busy machine


def has_credentials() -> bool:
    """Whether boto3 finds AWS credentials here (environment, profile, instance role)."""
    import boto3

    return boto3.Session().get_credentials() is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def check_port(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as err:
            raise StepError(
                f"cannot serve on {HOST}:{port} ({err.strerror.lower() if err.strerror else err}): "
                "stop what uses it, or choose another port (make server SERVER_PORT=5010)"
            ) from None


@contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1 (with `env` added to its environment) for the
    block's duration; its endpoint."""
    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        raise StepError("moto is not installed, and no object store is configured: run `make setup`")
    port = free_port()
    server = subprocess.Popen(
        [str(moto), "-H", HOST, "-p", str(port)],
        env=os.environ | (env or {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the terminal's Ctrl-C reaches this process, which stops it
    )
    try:
        wait_until(lambda: socket.create_connection((HOST, port), timeout=1).close(), server, "moto")
        yield f"http://{HOST}:{port}"
    finally:
        stop_step(server.pid)


@contextmanager
def stand_in_object_store() -> Iterator[str]:
    """moto's S3 server with the buckets of ARTIFACTS and DATA_REMOTE, and this process's
    environment pointing at it; its endpoint."""
    with moto_server() as endpoint:
        os.environ.update(STAND_IN_KEYS | {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"})
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        for location in (ARTIFACTS, DATA_REMOTE):
            s3.create_bucket(Bucket=location.split("/")[2])
        yield endpoint


def wait_until(ready: Callable[[], None], process: subprocess.Popen, name: str) -> None:
    """Call `ready` until it stops raising OSError; a StepError if `process` exits or START_S pass."""
    deadline = time.monotonic() + START_S
    while True:
        try:
            ready()
            return
        except OSError:
            if process.poll() is not None:
                raise StepError(f"{name} exited with code {process.returncode} as it started") from None
            if time.monotonic() > deadline:
                raise StepError(f"{name} did not answer within {START_S} s") from None
            time.sleep(0.3)


def server_command(port: int, db: str, artifacts: str) -> list[str]:
    """`mlflow server` on HOST:port over `db`, proxying `artifacts`."""
    mlflow = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow), "server", "--host", HOST, "--port", str(port), "--workers", "2",
        "--backend-store-uri", db, "--artifacts-destination", artifacts, "--serve-artifacts",
    ]  # fmt: skip


def banner(url: str, db: str, artifacts: str, stand_in: str | None) -> str:
    lines = [
        f"tracking server {url}",
        f"  backend store  {db}" + ("  (temporary, as the stand-in's objects are)" if stand_in else ""),
        f"  artifacts      {artifacts}, proxied by the server"
        + (f"  (moto's S3 server on {stand_in} stands in for the bucket)" if stand_in else ""),
        "in each member's clone:",
        f"  export MLFLOW_TRACKING_URI={url}",
    ]
    if stand_in:
        keys = " ".join(f"{name}={value}" for name, value in STAND_IN_KEYS.items())
        lines += [
            "and for a DVC remote on the same object store (docs/how-to/share-a-team-server.md):",
            f"  export AWS_ENDPOINT_URL={stand_in} {keys}",
            f"  dvc remote add -d --local team {DATA_REMOTE}",
        ]
    return "\n".join(lines + ["Ctrl-C stops it."])


def serve(port: int, db: str | None, artifacts: str) -> int:
    """Check everything, start the server, and wait for it (Ctrl-C stops it); its exit code."""
    with ExitStack() as stack:
        check_port(port)
        stand_in = None
        if not s3_endpoint() and not has_credentials():
            if db:
                raise StepError(
                    f"--db {db} with no object store configured: the stand-in keeps artifacts in memory, "
                    "so that db would outlive them; set AWS credentials (and AWS_ENDPOINT_URL) for a bucket"
                )
            stand_in = stack.enter_context(stand_in_object_store())
            db = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory(prefix='sheldon-server-'))}/mlflow.db"
        db = db or f"sqlite:///{REPO_ROOT / 'server' / 'mlflow.db'}"
        check_artifact_location(artifacts)
        check_tracking_store(db)
        if db.startswith("sqlite:///"):
            Path(db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Starlette's deprecation notice, once per worker, is MLflow's to act on, not the team's.
        env = os.environ | {"PYTHONWARNINGS": "ignore::DeprecationWarning"}
        if endpoint := s3_endpoint():  # MLflow's own name for it: its S3 client reads this one
            env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
        server = subprocess.Popen(
            server_command(port, db, artifacts),
            env=env,
            start_new_session=True,  # its workers with it, stopped as one group
        )
        stack.callback(stop_step, server.pid)
        url = f"http://{HOST}:{port}"
        health = f"{url}/health"
        wait_until(lambda: urllib.request.urlopen(health, timeout=2).close(), server, "mlflow server")
        print(banner(url, db, artifacts, stand_in), flush=True)
        return server.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sheldon.serving.server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--db", default=None, help="backend store URI (default: sqlite, server/mlflow.db; postgresql://...)"
    )
    parser.add_argument("--artifacts", default=ARTIFACTS, help=f"where artifacts go (default {ARTIFACTS})")
    args = parser.parse_args(argv)
    raise_on_signals()
    try:
        sys.exit(serve(args.port, args.db, args.artifacts))
    except StepError as err:
        sys.exit(f"error: {err}")
    except Interrupted:  # Ctrl-C: how a server is meant to stop; the stack stopped it
        print("tracking server stopped", flush=True)


if __name__ == "__main__":
    main()
