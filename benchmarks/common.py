"""What the pipeline benchmarks share: a repo copy with its own tracking store and W&B folder,
timing a command in it, and reading the pipeline's summary table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # copy_repo's home, shared with the tests

from helpers.checkout import copy_repo  # noqa: E402

STEPS = ("download_dataset", "preprocess", "train_model", "evaluate")


def fresh_copy(tmp: Path) -> Path:
    """A copy of this checkout as a fresh clone has it, in tmp/repo."""
    return copy_repo(tmp / "repo", REPO)


def bench_env(tmp: Path, store: str = "mlflow.db", library: Path | None = None) -> dict[str, str]:
    """This environment without the user's MLflow, W&B and sheldon settings: a sqlite store
    tmp/<store>, W&B offline under tmp, this venv's bin first on PATH, and, given `library`
    (a copy's src), the sheldon package of that copy rather than the editable install's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_", "SHELDON_"))}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / store}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "WANDB_DIR": str(tmp),
        "WANDB_MODE": "offline",
    }
    if library is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(library), env.get("PYTHONPATH", "")]))
    return env


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and stdout of a command; its output's tail, and exit, if it fails."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{(result.stdout + result.stderr)[-3000:]}")
    return seconds, result.stdout


def statuses(output: str) -> str:
    """The steps of a pipeline's summary table: name, status and seconds."""
    rows = [line.split() for line in output.splitlines() if line.split()[:1] and line.split()[0] in STEPS]
    return ", ".join(f"{row[0]} {row[1]} {row[2]}s" for row in rows if len(row) > 2)


def say(line: str) -> None:
    """A progress line, shown at once."""
    print(line, flush=True)
