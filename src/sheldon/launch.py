"""Launching a step as an MLflow project run, waiting for it, stopping it, and the runs around it:
the one `mlflow run .` opens before the pipeline starts, and runs whose process is gone."""

from __future__ import annotations

import os
import subprocess
from contextlib import suppress

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from sheldon.errors import StepError, first_line
from sheldon.paths import REPO_ROOT
from sheldon.processes import Interrupted, is_alive, stop_step
from sheldon.tracking import delete_launcher_run
from sheldon.vocabulary import PROCESS_TAG, STOPPED_TAG


class Launched:
    """A step's MLflow run and the process running its entry point (a child of this process)."""

    def __init__(self, run_id: str, process: subprocess.Popen) -> None:
        self.run_id = run_id
        self.process = process

    def wait(self, tags: dict[str, str]) -> bool:
        """Tag the run (before the step can finish, so no run of the pipeline goes untagged) and
        wait for the step; True when it succeeded. On a stop signal the step is stopped (it unwinds
        and closes its runs), its run is KILLED if it could not say so, and the signal goes on up."""
        try:
            client = mlflow.MlflowClient()
            for name, value in tags.items():
                client.set_tag(self.run_id, name, value)
            ok = self.process.wait() == 0
        except Interrupted as stop:
            stop_step(self.process.pid)
            end_run_if_running(self.run_id, RunStatus.KILLED, f"the pipeline was {stop}")
            raise
        if not ok:
            end_run_if_running(self.run_id, RunStatus.FAILED, "the step exited with an error")
        return ok


def start(step: str, params: dict[str, str], experiment_id: str, env_manager: str) -> Launched:
    """Start src/<step>'s entry point as an MLflow project run nested under the active run.
    `mlflow.projects.run(synchronous=False)` would start it through a second `mlflow run`
    process (~3.7 s a step here); MLflow's own synchronous path starts the command directly, and
    returns before waiting when called below `run` (mlflow is pinned: see pyproject.toml)."""
    try:
        submitted = mlflow.projects._run(
            uri=str(REPO_ROOT / "src" / step),
            experiment_id=experiment_id,
            entry_point="main",
            version=None,
            parameters=params,
            docker_args={},
            backend_name="local",
            backend_config={},
            storage_dir=None,
            env_manager=env_manager,
            synchronous=True,
            run_name=step,
            build_image=False,
            docker_auth=None,
        )
    except MlflowException as err:
        raise StepError(first_line(f"cannot launch {step}: {err.message}")) from None
    return Launched(submitted.run_id, submitted.command_proc)


def end_run_if_running(run_id: str, status: RunStatus, why: str) -> None:
    """End a run that its own process left open (killed, or stopped before it could), saying why."""
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, STOPPED_TAG, why)
        client.set_terminated(run_id, RunStatus.to_string(status))


def fail_dead_runs(experiment_ids: list[str]) -> None:
    """Runs left RUNNING by a process that is gone (a pipeline killed with kill -9, a crashed
    session on this host) can never finish: mark them FAILED, saying why."""
    client = mlflow.MlflowClient()
    dead = [
        run
        for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000)
        if PROCESS_TAG in run.data.tags and is_alive(run.data.tags[PROCESS_TAG]) is False
    ]
    for run in dead:
        why = f"its process ({run.data.tags[PROCESS_TAG]}) ended without closing it: killed or crashed"
        end_run_if_running(run.info.run_id, RunStatus.FAILED, why)
    if dead:
        names = ", ".join(f"{r.info.run_name} {r.info.run_id[:8]}" for r in dead)
        print(f"marked {len(dead)} run(s) FAILED whose process is gone (never reused): {names}")


def claim_launcher_run(experiment_id: str | None) -> str | None:
    """`mlflow run .` opens a run before main.py starts, in its own experiment (Default unless told).
    In the pipeline's experiment it becomes the pipeline run; elsewhere it is deleted (once that
    `mlflow run` has exited), so that launches leave nothing in Default, failed ones included."""
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    if not launcher or mlflow.get_run(launcher).info.experiment_id == experiment_id:
        return launcher
    delete_launcher_run(launcher)
    return None


def discard_launcher_run() -> None:
    """A launch that fails before its pipeline run opens leaves no stray run behind."""
    with suppress(MlflowException):  # the store itself is what failed: the error said so
        claim_launcher_run(None)
