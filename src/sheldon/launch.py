"""Launching a step as an MLflow project run, waiting for it, stopping it, and the runs around it:
the one `mlflow run .` opens before the pipeline starts, and runs whose process is gone."""

from __future__ import annotations

import os
import shutil
import subprocess

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.projects.backend.local import LocalBackend
from mlflow.projects.utils import (
    MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG,
    PROJECT_BUILD_IMAGE,
    PROJECT_DOCKER_ARGS,
    PROJECT_DOCKER_AUTH,
    PROJECT_ENV_MANAGER,
    PROJECT_STORAGE_DIR,
    PROJECT_SYNCHRONOUS,
    fetch_and_validate_project,
    get_entry_point_command,
    get_or_create_run,
    get_run_env_vars,
    load_project,
)
from mlflow.utils.process import ShellCommandException

from sheldon.artifacts import inputs_folder, inputs_root
from sheldon.backends import Backend
from sheldon.environments import building
from sheldon.errors import StepError, first_line
from sheldon.output import is_verbose
from sheldon.paths import step_dir
from sheldon.prestart import Forked, Prestarted
from sheldon.processes import Interrupted, is_alive, stop_step
from sheldon.tracking import delete_launcher_run
from sheldon.vocabulary import BACKEND_TAG, PROCESS_TAG, RUN_NAME_TAG, STOPPED_TAG

ENTRY_POINT = "main"  # the entry point of every step's MLproject
LOCAL = Backend()


class Launched:
    """A step's MLflow run and the process running its entry point: a child of this process, or
    an interpreter forked for it by sheldon/prestart.py's template (a Kubernetes Job: sheldon/jobs.py)."""

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


def start(
    step: str,
    params: dict[str, str],
    experiment_id: str,
    env_manager: str,
    prestarted: Prestarted,
    backend: Backend = LOCAL,
) -> Launched:
    """Start src/<step>'s entry point as an MLflow project run nested under the active run, as
    MLflow's local backend does, in the interpreter started ahead for it when there is one
    (sheldon/prestart.py); on Kubernetes, as a Job (sheldon/jobs.py). `mlflow.projects.run(
    synchronous=False)` would start each step through a second `mlflow run` process (~3.7 s a step here)."""
    if backend.name == "kubernetes":
        from sheldon.jobs import start_job  # the Kubernetes and Docker clients load for it alone

        return start_job(step, params, experiment_id, backend.config)
    work_dir = str(step_dir(step))
    client = mlflow.MlflowClient()
    run_id, process = "", None
    try:
        fetch_and_validate_project(work_dir, None, ENTRY_POINT, params)
        project = load_project(work_dir)
        run = get_or_create_run(None, work_dir, experiment_id, work_dir, None, ENTRY_POINT, params)
        run_id = run.info.run_id
        client.set_tag(run_id, RUN_NAME_TAG, step)
        client.set_tag(run_id, BACKEND_TAG, "local")
        if env_manager == "local":
            command = get_entry_point_command(project, ENTRY_POINT, params, str(inputs_folder(run_id)))[0]
            env = os.environ | get_run_env_vars(run_id, experiment_id)
            if (process := prestarted.run(step_dir(step), command, env)) and is_verbose():
                print(f"  command: {command}  (MLflow run {run_id})", flush=True)
        if process is None:
            config = {
                PROJECT_ENV_MANAGER: env_manager,
                PROJECT_SYNCHRONOUS: True,  # start the command itself, not a second `mlflow run`
                MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG: run_id,
                PROJECT_DOCKER_ARGS: {},
                PROJECT_STORAGE_DIR: str(inputs_folder(run_id)),  # MLflow's for `path` parameters
                PROJECT_BUILD_IMAGE: False,
                PROJECT_DOCKER_AUTH: None,
            }
            uri, local = mlflow.get_tracking_uri(), LocalBackend()
            with building(env_manager):
                submitted = local.run(work_dir, ENTRY_POINT, params, None, config, uri, experiment_id)
            process = submitted.command_proc
    except Interrupted as stop:  # the run is open and nobody waits for its step yet: close both
        if process is not None and process.pid is not None:
            stop_step(process.pid)
        if run_id:
            end_run_if_running(run_id, RunStatus.KILLED, f"the pipeline was {stop}")
        raise
    except MlflowException as err:
        raise StepError(first_line(f"cannot launch {step}: {err.message}")) from None
    except (ShellCommandException, FileNotFoundError) as err:  # the env manager's own error is above
        why = f"{env_manager} could not build its environment from src/{step}/conda.yml"
        end_run_if_running(run_id, RunStatus.FAILED, why)
        cause = "" if isinstance(err, ShellCommandException) else f": {first_line(err)}"
        raise StepError(f"{step}: {why}{cause or ' (its error is above)'}") from None
    return Launched(run_id, process)


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
