"""The MLflow runs around a step's process, whichever launcher started it: the handle that waits
for a step and stops it, the run `mlflow run .` opens before the pipeline starts, and runs whose
process is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import suppress

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from sheldon.core.processes import Interrupted, is_alive, stop_step
from sheldon.core.vocabulary import PROCESS_TAG, STOPPED_TAG
from sheldon.engine.launchers.prestart import Forked
from sheldon.step.artifacts import inputs_folder, inputs_root
from sheldon.step.tracking import delete_launcher_run

ENTRY_POINT = "main"  # the entry point of every step's MLproject


class Launched:
    """A step's MLflow run and the process running its entry point: a child of this process, or
    an interpreter forked for it by the prestarted template (prestart.py), or a Kubernetes Job
    (kubernetes.py)."""

    def __init__(self, run_id: str, process: subprocess.Popen | Forked) -> None:
        self.run_id = run_id
        self.process = process

    def remove_inputs(self) -> None:
        """Remove what the step downloaded (its inputs), once it has ended."""
        shutil.rmtree(inputs_folder(self.run_id), ignore_errors=True)

    def wait(self, tags: dict[str, str]) -> bool:
        """Tag the run (before the step can finish, so no run of the pipeline goes untagged) and
        wait for the step; True when it succeeded. On a stop signal the step is stopped (it unwinds
        and closes its runs), its run is KILLED if it could not say so, and the signal goes on up."""
        try:
            client = mlflow.MlflowClient()
            for name, value in tags.items():
                client.set_tag(self.run_id, name, value)
            ok = self.succeeded()
        except Interrupted as stop:
            self.stop()
            end_run_if_running(self.run_id, RunStatus.KILLED, f"the pipeline was {stop}")
            raise
        finally:
            self.remove_inputs()
        if not ok:
            end_run_if_running(self.run_id, RunStatus.FAILED, "the step exited with an error")
        return ok

    def succeeded(self) -> bool:
        """Wait for the step to end; True when it succeeded."""
        return self.process.wait() == 0

    def stop(self) -> None:
        """Stop the step and all it started (it unwinds and closes its runs)."""
        if self.process.pid is not None:
            stop_step(self.process.pid)


def end_run_if_running(run_id: str, status: RunStatus, why: str) -> None:
    """End a run that its own process left open (killed, or stopped before it could), saying why,
    and remove what its step had downloaded, which a killed process could not."""
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, STOPPED_TAG, why)
        client.set_terminated(run_id, RunStatus.to_string(status))
    shutil.rmtree(inputs_folder(run_id), ignore_errors=True)


def fail_dead_runs(experiment_ids: list[str]) -> None:
    """Runs left RUNNING by a process that is gone (a pipeline killed with kill -9, a crashed
    session on this host) can never finish: mark them FAILED, saying why, and remove the inputs
    that ended runs' steps left behind."""
    client = mlflow.MlflowClient()
    dead = [
        run
        for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000)
        if PROCESS_TAG in run.data.tags and is_alive(run.data.tags[PROCESS_TAG]) is False
    ]
    for run in dead:
        why = f"its process ({run.data.tags[PROCESS_TAG]}) ended without closing it: killed or crashed"
        end_run_if_running(run.info.run_id, RunStatus.FAILED, why)
    remove_left_inputs(client)
    if dead:
        names = ", ".join(f"{r.info.run_name} {r.info.run_id[:8]}" for r in dead)
        print(f"marked {len(dead)} run(s) FAILED whose process is gone (never reused): {names}")


def remove_left_inputs(client: mlflow.MlflowClient) -> None:
    """Remove the inputs folders of this store's runs that are over: what a step killed while it
    cleaned up (after its run was closed) could not remove. Other stores' folders are left alone."""
    for folder in inputs_root().glob("*") if inputs_root().is_dir() else ():
        try:
            over = client.get_run(folder.name).info.status != "RUNNING"
        except MlflowException:  # not a run of this store
            continue
        if over:
            shutil.rmtree(folder, ignore_errors=True)


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
