"""The one door to MLflow's code that is not its public API. sheldon launches each step as MLflow's
`mlflow run` would (sheldon/engine/launchers/): the local backend, the kubernetes backend's Job and
image, the run a project opens and the command it renders. MLflow offers these only as the inside
of `mlflow.projects.run`, so sheldon reaches into mlflow.projects (its utils, backends, docker and
kubernetes modules, private names among them), mlflow.utils and mlflow.store. None of it is
promised to stay: it was read from mlflow==READ_FROM, the version pyproject.toml pins, and every
other module of sheldon takes it from here.

On an MLflow upgrade, re-read what each function here wraps (its docstring's "Wraps ..."):
its arguments, what it returns and raises, and the backend config keys and tag names re-exported,
then run tests/engine/test_mlflow_internals.py, which holds one test per entry point and fails first
on a new version, and set READ_FROM. MLflow loads the kubernetes and docker modules (the `docker`
and `kubernetes` clients, ~0.5 s) for the kubernetes backend alone; their entry points import them
when called."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Run
from mlflow.projects import _parse_kubernetes_config
from mlflow.projects._project_spec import Project
from mlflow.projects.backend.local import LocalBackend
from mlflow.projects.utils import (
    MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG,
    PROJECT_BUILD_IMAGE,
    PROJECT_DOCKER_ARGS,
    PROJECT_DOCKER_AUTH,
    PROJECT_ENV_MANAGER,
    PROJECT_STORAGE_DIR,
    PROJECT_SYNCHRONOUS,
)
from mlflow.projects.utils import fetch_and_validate_project as _fetch_and_validate_project
from mlflow.projects.utils import get_entry_point_command as _get_entry_point_command
from mlflow.projects.utils import get_or_create_run as _get_or_create_run
from mlflow.projects.utils import get_run_env_vars as _get_run_env_vars
from mlflow.projects.utils import load_project as _load_project
from mlflow.store.db.db_types import DATABASE_ENGINES
from mlflow.utils.mlflow_tags import MLFLOW_DOCKER_IMAGE_ID, MLFLOW_PROJECT_ENV
from mlflow.utils.process import ShellCommandException

if TYPE_CHECKING:
    from docker.models.images import Image
    from mlflow.projects.kubernetes import KubernetesSubmittedRun

READ_FROM = "3.17.2"  # the MLflow this module was read from: re-check it all when mlflow differs

__all__ = [
    "DATABASE_ENGINES",  # the URI schemes of the stores MLflow keeps in a database (SQLAlchemy's)
    "MLFLOW_DOCKER_IMAGE_ID",  # the tag of a run's image digest, which MLflow's UI shows
    "MLFLOW_PROJECT_ENV",  # the tag of the environment a project run ran in ("docker", "uv", ...)
    "Project",  # an MLproject as MLflow loads it (its name, docker_env, entry points)
    "READ_FROM",
    "ShellCommandException",  # an env manager's command failed (uv, virtualenv, conda)
    "build_docker_image",
    "create_project_run",
    "fetch_and_validate_project",
    "get_entry_point_command",
    "get_kubernetes_job_definition",
    "get_run_env_vars",
    "kubernetes_submitted_run",
    "load_kube_context",
    "load_project",
    "parse_kubernetes_backend_config",
    "push_image_to_registry",
    "run_with_local_backend",
    "validate_docker_env",
    "validate_docker_installation",
]

_WARNED = "SHELDON_MLFLOW_INTERNALS_WARNED"  # a process that warned tells those it starts
if mlflow.__version__ != READ_FROM and not os.environ.get(_WARNED):
    os.environ[_WARNED] = "1"
    print(
        f"warning: mlflow {mlflow.__version__} is installed; sheldon/engine/mlflow_internals.py was read "
        f"from {READ_FROM}: run tests/engine/test_mlflow_internals.py",
        file=sys.stderr,
    )


def fetch_and_validate_project(work_dir: str, entry_point: str, params: dict[str, str]) -> str:
    """The project folder, once MLflow found the entry point and every parameter it needs
    (ExecutionException, an MlflowException, otherwise).
    Wraps mlflow.projects.utils.fetch_and_validate_project."""
    return _fetch_and_validate_project(work_dir, None, entry_point, params)


def load_project(work_dir: str) -> Project:
    """The folder's MLproject as MLflow reads it.
    Wraps mlflow.projects.utils.load_project."""
    return _load_project(work_dir)


def create_project_run(work_dir: str, experiment_id: str, entry_point: str, params: dict[str, str]) -> Run:
    """A new run of the project, as `mlflow run` opens it: nested under the active run, tagged with
    its source, git commit and entry point, its parameters (defaults included) logged.
    Wraps mlflow.projects.utils.get_or_create_run, given no run id."""
    return _get_or_create_run(None, work_dir, experiment_id, work_dir, None, entry_point, params)


def get_entry_point_command(
    project: Project, entry_point: str, params: dict[str, str], storage_dir: str
) -> list[str]:
    """The entry point's shell command(s) with the parameters filled in; `path` parameters that
    are not local files are downloaded under storage_dir.
    Wraps mlflow.projects.utils.get_entry_point_command."""
    return _get_entry_point_command(project, entry_point, params, storage_dir)


def get_run_env_vars(run_id: str, experiment_id: str) -> dict[str, str]:
    """The environment that tells a step's process its run, experiment and tracking store
    (MLFLOW_RUN_ID, MLFLOW_EXPERIMENT_ID, MLFLOW_TRACKING_URI).
    Wraps mlflow.projects.utils.get_run_env_vars."""
    return _get_run_env_vars(run_id, experiment_id)


def run_with_local_backend(
    work_dir: str,
    entry_point: str,
    params: dict[str, str],
    *,
    run_id: str,
    experiment_id: str,
    env_manager: str,
    storage_dir: str,
) -> subprocess.Popen:
    """Start the entry point in the run run_id through MLflow's local backend, which builds the
    project's environment with env_manager first (ShellCommandException when that fails), and the
    process that runs the command, not waited for.
    Wraps mlflow.projects.backend.local.LocalBackend.run and the backend config keys it reads."""
    config = {
        PROJECT_ENV_MANAGER: env_manager,
        PROJECT_SYNCHRONOUS: True,  # start the command itself, not a second `mlflow run`
        MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG: run_id,
        PROJECT_DOCKER_ARGS: {},
        PROJECT_STORAGE_DIR: storage_dir,  # where `path` parameters are downloaded
        PROJECT_BUILD_IMAGE: False,
        PROJECT_DOCKER_AUTH: None,
    }
    uri = mlflow.get_tracking_uri()
    submitted = LocalBackend().run(work_dir, entry_point, params, None, config, uri, experiment_id)
    return submitted.command_proc


def parse_kubernetes_backend_config(settings: dict[str, Any]) -> dict[str, Any]:
    """The kubernetes backend's config as MLflow parses it: kube-job-template-path and
    repository-uri checked (ExecutionException), the template loaded as kube-job-template (YAMLError
    or OSError when it cannot be).
    Wraps mlflow.projects._parse_kubernetes_config."""
    return _parse_kubernetes_config(settings)


def get_kubernetes_job_definition(
    project_name: str,
    image: str,
    digest: str,
    command: list[str],
    env: dict[str, str],
    template: dict[str, Any],
    *,
    announce: bool = True,
) -> dict[str, Any]:
    """The Job MLflow makes of the template (changed in place): named after the project and the
    time, the image by digest, the command, env added to the container's (KUBE_MLFLOW_TRACKING_URI
    as MLFLOW_TRACKING_URI). announce=False: without MLflow's INFO line "=== Creating Job ... ===".
    Wraps mlflow.projects.kubernetes._get_kubernetes_job_definition and the logger it writes to."""
    import logging

    from mlflow.projects.kubernetes import _get_kubernetes_job_definition

    log = logging.getLogger("mlflow.projects.kubernetes")
    level = log.level
    if not announce:
        log.setLevel(logging.WARNING)
    try:
        return _get_kubernetes_job_definition(project_name, image, digest, command, env, template)
    finally:
        log.setLevel(level)


def load_kube_context(context: str | None) -> None:
    """Point the Kubernetes client at the kube context (None: the current one), or at the
    in-cluster config when the kubeconfig has no such context.
    Wraps mlflow.projects.kubernetes._load_kube_context."""
    from mlflow.projects.kubernetes import _load_kube_context

    _load_kube_context(context=context)


def kubernetes_submitted_run(run_id: str, job_name: str, namespace: str) -> KubernetesSubmittedRun:
    """The handle on a submitted Job: wait() polls its status every 5 s (True when it completed),
    cancel() deletes the Job.
    Wraps mlflow.projects.kubernetes.KubernetesSubmittedRun."""
    from mlflow.projects.kubernetes import KubernetesSubmittedRun

    return KubernetesSubmittedRun(run_id, job_name, namespace)


def push_image_to_registry(image_tag: str) -> str:
    """Push the image to its registry (Docker's client); the digest the registry gives it.
    Wraps mlflow.projects.kubernetes.push_image_to_registry."""
    from mlflow.projects.kubernetes import push_image_to_registry as _push_image_to_registry

    return _push_image_to_registry(image_tag)


def build_docker_image(work_dir: str, repository_uri: str, base_image: str, run_id: str) -> Image:
    """The image Docker builds FROM base_image with the project folder copied in, tagged
    repository_uri:<git commit> (the run tagged with its URI and id), without a registry login.
    Wraps mlflow.projects.docker.build_docker_image (build_image=True, docker_auth=None)."""
    from mlflow.projects.docker import build_docker_image as _build_docker_image

    return _build_docker_image(work_dir, repository_uri, base_image, run_id, True, None)


def validate_docker_env(project: Project) -> None:
    """ExecutionException unless the project has a name and a docker_env image.
    Wraps mlflow.projects.docker.validate_docker_env."""
    from mlflow.projects.docker import validate_docker_env as _validate_docker_env

    _validate_docker_env(project)


def validate_docker_installation() -> None:
    """ExecutionException unless `docker` is on PATH and `docker info` succeeds (the message then
    holds what it said).
    Wraps mlflow.projects.docker.validate_docker_installation."""
    from mlflow.projects.docker import validate_docker_installation as _validate_docker_installation

    _validate_docker_installation()
