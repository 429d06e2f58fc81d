"""A step launched on this machine as an MLflow project run: in the interpreter started ahead for
it (sheldon/engine/launchers/prestart.py) under env manager `local`, else through MLflow's local
backend, which builds the step's environment first (uv, virtualenv, conda)."""

from __future__ import annotations

import os

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from sheldon.core.errors import StepError, first_line
from sheldon.core.output import is_verbose
from sheldon.core.paths import step_dir
from sheldon.core.processes import Interrupted, stop_step
from sheldon.core.vocabulary import BACKEND_TAG, RUN_NAME_TAG
from sheldon.engine.environments import building
from sheldon.engine.launchers.prestart import Prestarted
from sheldon.engine.launchers.runs import ENTRY_POINT, Launched, end_run_if_running
from sheldon.engine.mlflow_internals import (
    ShellCommandException,
    create_project_run,
    fetch_and_validate_project,
    get_entry_point_command,
    get_run_env_vars,
    load_project,
    run_with_local_backend,
)
from sheldon.step.artifacts import inputs_folder


def start_local(
    step: str, params: dict[str, str], *, experiment_id: str, env_manager: str, prestarted: Prestarted
) -> Launched:
    """Start src/<step>'s entry point as an MLflow project run nested under the active run, as
    MLflow's local backend does, in the interpreter started ahead for it when there is one.
    `mlflow.projects.run(synchronous=False)` would start each step through a second `mlflow run`
    process (~3.7 s a step here)."""
    work_dir = str(step_dir(step))
    client = mlflow.MlflowClient()
    run_id, process = "", None
    try:
        fetch_and_validate_project(work_dir, ENTRY_POINT, params)
        project = load_project(work_dir)
        run = create_project_run(work_dir, experiment_id, ENTRY_POINT, params)
        run_id = run.info.run_id
        client.set_tag(run_id, RUN_NAME_TAG, step)
        client.set_tag(run_id, BACKEND_TAG, "local")
        if env_manager == "local":
            command = get_entry_point_command(project, ENTRY_POINT, params, str(inputs_folder(run_id)))[0]
            env = os.environ | get_run_env_vars(run_id, experiment_id)
            if (process := prestarted.run(step_dir(step), command, env)) and is_verbose():
                print(f"  command: {command}  (MLflow run {run_id})", flush=True)
        if process is None:
            with building(env_manager):
                process = run_with_local_backend(
                    work_dir,
                    ENTRY_POINT,
                    params,
                    run_id=run_id,
                    experiment_id=experiment_id,
                    env_manager=env_manager,
                    storage_dir=str(inputs_folder(run_id)),  # MLflow's for `path` parameters
                )
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
