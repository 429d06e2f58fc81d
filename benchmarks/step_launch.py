"""What a step that does nothing costs: sheldon's engine launching a step whose run.py only opens
and closes its step_run (an MLflow run and an offline W&B run), against a bare `python -c` that
imports mlflow and wandb and opens and closes one MLflow run and one offline W&B run.

    .venv/bin/python benchmarks/step_launch.py [--launches 5]

In a temporary copy of the repo (own sqlite store, W&B offline) with the step added as
src/noop_step, one process that has imported the engine, as a pipeline has, alternately times
`sheldon.engine.launchers.local.start_local(...).wait(...)` of the step (under a pipeline run,
as main.py launches a step) and the bare process, from start to exit. Prints the best of each and the ratio
launch / bare (goal <= 1.5). benchmarks/reference_pipeline.py runs the same measurement."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bench_env, fresh_copy, say, timed

STEP = "noop_step"
MLPROJECT = f'name: {STEP}\nentry_points:\n  main:\n    command: "python run.py"\n'
RUN_PY = f'''"""A step that does nothing: it opens and closes its MLflow and W&B runs."""

from sheldon.step.tracking import step_run

with step_run("{STEP}", {{}}):
    pass
'''
BARE = "import mlflow, wandb\nwith mlflow.start_run():\n    wandb.init(mode='offline').finish()\n"
RESULT = "step_launch result: "


def add_noop_step(root: Path) -> None:
    """src/noop_step in a repo copy: an MLproject whose run.py only opens and closes step_run."""
    folder = root / "src" / STEP
    folder.mkdir()
    (folder / "MLproject").write_text(MLPROJECT)
    (folder / "run.py").write_text(RUN_PY)


def compare_here(launches: int) -> None:
    """In a repo copy holding src/noop_step: alternately a bare process and a launch of the step,
    `launches` times each; prints their wall seconds as one JSON line after RESULT."""
    import mlflow

    from sheldon.core.processes import PIPELINE_ENV, process_token
    from sheldon.core.vocabulary import PROCESS_TAG
    from sheldon.engine.launchers.local import start_local
    from sheldon.engine.launchers.prestart import Prestarted
    from sheldon.step.tracking import configure_tracking

    configure_tracking()
    os.environ[PIPELINE_ENV] = process_token()  # as run_pipeline sets it for its steps
    os.environ["WANDB_PROJECT"] = "step_launch"
    experiment_id = mlflow.set_experiment("step_launch").experiment_id
    times: dict[str, list[float]] = {"bare": [], "launch": []}
    with mlflow.start_run(run_name="pipeline"):
        for _ in range(launches):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", BARE], check=True)
            times["bare"].append(time.perf_counter() - started)
            started = time.perf_counter()
            launched = start_local(
                STEP, {}, experiment_id=experiment_id, env_manager="local", prestarted=Prestarted()
            )  # cold: none started ahead
            if not launched.wait({PROCESS_TAG: os.environ[PIPELINE_ENV]}):
                sys.exit(f"{STEP} failed")
            times["launch"].append(time.perf_counter() - started)
    print(RESULT + json.dumps(times))


def measure(root: Path, env: dict[str, str], launches: int) -> tuple[list[float], list[float]]:
    """Seconds of the bare process and of the launched step, `launches` of each, alternately, in a
    repo copy that add_noop_step has prepared."""
    say(f"step that does nothing: {launches} launches by sheldon's engine, each beside a bare process ...")
    script = str(root / "benchmarks" / "step_launch.py")
    _, out = timed([sys.executable, script, "--in-copy", "--launches", str(launches)], root, env)
    line = next(line for line in out.splitlines() if line.startswith(RESULT))
    times = json.loads(line.removeprefix(RESULT))
    return times["bare"], times["launch"]


def report(bare: list[float], launch: list[float]) -> str:
    """The lines that give the result, best of each."""
    ratio = min(launch) / min(bare)
    return (
        f"bare process (import mlflow, wandb; one MLflow run, one W&B run)  best {min(bare):5.2f} s"
        f"  ({', '.join(f'{s:.2f}' for s in bare)})\n"
        f"step that does nothing, launched by sheldon   best {min(launch):5.2f} s"
        f"  ({', '.join(f'{s:.2f}' for s in launch)})  ratio {ratio:.2f} (goal <= 1.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=5, help="launches of each; the best counts")
    parser.add_argument("--in-copy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_copy:  # the measuring process, in the copy (see measure)
        compare_here(args.launches)
        return
    with tempfile.TemporaryDirectory(prefix="sheldon-bench-") as tmp:
        root = fresh_copy(Path(tmp))
        add_noop_step(root)
        bare, launch = measure(root, bench_env(Path(tmp), library=root / "src"), args.launches)
    print(report(bare, launch))


if __name__ == "__main__":
    main()
