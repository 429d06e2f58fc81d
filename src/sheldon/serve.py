"""The repository's tracking store, opened to people and programs, on 127.0.0.1:

    python -m sheldon.serve model [--port 5001]   # make serve: the champion, over HTTP
    python -m sheldon.serve ui [--port 5000]      # make ui: the MLflow UI

`model` serves `models:/<evaluate.registered_model_name>@champion` with `mlflow models serve`
(the local environment: nothing is installed); with no champion yet, it stops with one line
instead of MLflow's traceback. Both read the store `make run` writes (or MLFLOW_TRACKING_URI)."""

from __future__ import annotations

import argparse
import os
import sys

from sheldon.errors import StepError
from sheldon.pipeline import use_this_python
from sheldon.registry import champion_uri
from sheldon.store import check_tracking_store, tracking_environment
from sheldon.tracking import configured

HOST = "127.0.0.1"


def command(what: str, port: int) -> list[str]:
    """The mlflow command that serves `what` (model or ui) on HOST:port."""
    uri = tracking_environment()
    check_tracking_store(uri)
    use_this_python()  # mlflow, and the server it starts, from this interpreter's environment
    if what == "ui":
        return ["mlflow", "ui", "--backend-store-uri", uri, "--host", HOST, "--port", str(port)]
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = champion_uri(str(configured("evaluate").get("registered_model_name", "")))
    print(f"serving {model} on http://{HOST}:{port}/invocations", flush=True)
    return [
        "mlflow",
        "models",
        "serve",
        "-m",
        model,
        "--env-manager",
        "local",
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sheldon.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["model", "ui"])
    parser.add_argument("--port", type=int, default=None, help="default: 5001 (model), 5000 (ui)")
    args = parser.parse_args(argv)
    try:
        served = command(args.what, args.port or (5001 if args.what == "model" else 5000))
    except StepError as err:
        sys.exit(f"error: {err}")
    os.execvp(served[0], served)  # the server itself, in this process: Ctrl-C stops it


if __name__ == "__main__":
    main()
