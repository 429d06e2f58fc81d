"""Where the steps run: the MLflow Projects backend every step's launch uses (`main.backend`) and
its settings (`main.backend_config`), checked while the pipeline is planned, before anything runs.
`local` runs each step on this machine; `kubernetes` runs each as a Kubernetes Job through MLflow's
kubernetes backend (docs/how-to/run-on-a-cluster.md). MLflow loads only for `kubernetes`."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import yaml

from sheldon.core.errors import StepError, first_line, shorten, yaml_problem
from sheldon.core.paths import absolute_tracking_uri, repo_path

BACKENDS = ("local", "kubernetes")
# Ours, beside MLflow's keys: the image each step's image is built FROM, its MLproject's docker_env
# for this backend alone (the MLprojects name conda.yml, for local and conda runs).
STEP_IMAGE = "step-image"
JOB_TEMPLATE = "kube-job-template-path"
LOCAL_STORES = ("sqlite", "file")  # stores in a file on this machine, which no pod can reach


@dataclass(frozen=True)
class Backend:
    """The backend every step launches on, and its config as MLflow's backend takes it."""

    name: str = "local"
    config: dict[str, Any] = field(default_factory=dict)  # kubernetes: its job template loaded


def resolve_backend(name: str, config_path: str) -> Backend:
    """`main.backend` and `main.backend_config` (a JSON or YAML file, relative to the repo root),
    checked as MLflow's backend will use them, with a tracking store the pods can reach. A
    StepError names what is wrong."""
    if name not in BACKENDS:
        raise StepError(f"main.backend={shorten(name)!r}: use one of {', '.join(BACKENDS)}")
    if name == "local":
        return Backend()
    config = kubernetes_config(config_path)
    check_store_reachable()
    return Backend(name, config)


def kubernetes_config(config_path: str) -> dict[str, Any]:
    """The settings of MLflow's kubernetes backend in `main.backend_config`, as MLflow parses them
    (its checks, its job template loaded), and the step image."""
    if not config_path:
        raise StepError(
            "main.backend=kubernetes needs main.backend_config: a JSON or YAML file naming kube-context, "
            f"repository-uri, {JOB_TEMPLATE} and {STEP_IMAGE} (deploy/kubernetes/backend-config.json)"
        )
    setting = f"main.backend_config={shorten(config_path)}"
    try:
        settings = yaml.safe_load(repo_path(config_path).read_text())  # JSON is YAML too
    except FileNotFoundError:
        raise StepError(f"{setting}: no such file ({shorten(repo_path(config_path))})") from None
    except yaml.YAMLError as err:
        raise StepError(f"{setting}: not JSON or YAML: {yaml_problem(err)}") from None
    except OSError as err:
        raise StepError(f"{setting}: cannot be read: {first_line(err)}") from None
    if not isinstance(settings, dict):
        raise StepError(f"{setting}: expected a mapping of settings, found {type(settings).__name__}")
    if settings.get(JOB_TEMPLATE):
        settings[JOB_TEMPLATE] = str(repo_path(settings[JOB_TEMPLATE]))
    config = parse_kubernetes_config(setting, settings)
    if not config.get(STEP_IMAGE):
        raise StepError(f"{setting}: Could not find '{STEP_IMAGE}' (the image built from deploy/kubernetes)")
    check_job_template(config)
    return config


def parse_kubernetes_config(setting: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The config as MLflow's kubernetes backend parses it (its checks, its job template loaded)."""
    from mlflow.exceptions import MlflowException

    from sheldon.engine.mlflow_internals import parse_kubernetes_backend_config

    try:
        return parse_kubernetes_backend_config(settings)
    except MlflowException as err:
        raise StepError(f"{setting}: {first_line(err.message)}") from None
    except yaml.YAMLError as err:
        template = shorten(settings[JOB_TEMPLATE])
        raise StepError(f"{setting}: its job template {template} is not YAML: {yaml_problem(err)}") from None
    except OSError as err:
        template = shorten(settings[JOB_TEMPLATE])
        raise StepError(f"{setting}: its job template {template} cannot be read: {first_line(err)}") from None


def check_job_template(config: dict[str, Any]) -> None:
    """The Job that MLflow makes of the template (its name, image, command and environment filled
    in) is one, as the Kubernetes client reads a Job, in a namespace."""
    from kubernetes.client import ApiClient

    from sheldon.engine.mlflow_internals import get_kubernetes_job_definition

    where = f"{shorten(config[JOB_TEMPLATE])}: not a Kubernetes Job template"
    try:
        template = copy.deepcopy(config["kube-job-template"])
        filled = get_kubernetes_job_definition(  # without "=== Creating Job ===": none is created
            "step", "image", "sha256:0", ["python"], {}, template, announce=False
        )
        # Read as the client reads a Job the cluster sends: its models check their required fields.
        job = ApiClient().deserialize(SimpleNamespace(data=json.dumps(filled, default=str)), "V1Job")
    except (KeyError, IndexError, TypeError, AttributeError):
        job = None
    except ValueError as err:
        raise StepError(f"{where}: {first_line(err)}") from None
    if job is None or job.kind != "Job" or not (job.metadata and job.metadata.namespace):
        raise StepError(
            f"{where} MLflow can fill: it needs kind: Job, metadata.namespace and "
            "spec.template.spec.containers (deploy/kubernetes/job-template.yaml)"
        )


def check_store_reachable() -> None:
    """The steps' pods log to the tracking store: one in a file on this machine is out of their reach."""
    uri = os.environ.get("KUBE_MLFLOW_TRACKING_URI") or absolute_tracking_uri(
        os.environ.get("MLFLOW_TRACKING_URI")
    )
    if uri.split(":")[0] in LOCAL_STORES:
        raise StepError(
            f"main.backend=kubernetes: the steps' pods cannot reach the tracking store {shorten(uri)}; "
            "use a tracking server (MLFLOW_TRACKING_URI=http://...), or name the pods' way to the same "
            "store in KUBE_MLFLOW_TRACKING_URI"
        )


def check_machine(backend: Backend) -> None:
    """What the backend needs on this machine: for kubernetes, Docker, with which MLflow builds and
    pushes each step's image, and the kube-context it names."""
    if backend.name != "kubernetes":
        return
    check_docker()
    check_kube_context(backend.config.get("kube-context"))


def check_kube_context(context: str | None) -> None:
    """A kube-context named is one of the kubeconfig's (KUBECONFIG, or ~/.kube/config). MLflow falls
    back to the in-cluster config when it is not, which only a pipeline inside a pod has; left out,
    MLflow takes the current context, or the in-cluster config."""
    from kubernetes.config import ConfigException, list_kube_config_contexts

    if not context or os.environ.get("KUBERNETES_SERVICE_HOST"):  # in a pod: the in-cluster config
        return
    where = f"main.backend=kubernetes: kube-context {context!r}"
    try:
        names = [c["name"] for c in list_kube_config_contexts()[0]]
    except ConfigException as err:
        raise StepError(f"{where}, but no kubeconfig: {first_line(err)}") from None
    if context not in names:
        raise StepError(f"{where} is not in the kubeconfig (its contexts: {', '.join(names) or 'none'})")


def check_docker() -> None:
    """Docker runs here (`docker info`), as MLflow checks it."""
    from mlflow.exceptions import MlflowException

    from sheldon.engine.mlflow_internals import validate_docker_installation

    try:
        validate_docker_installation()
    except MlflowException as err:  # what MLflow ran, and the last line of what that said
        lines = [line.strip() for line in err.message.strip().splitlines()]
        said = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
        raise StepError(f"main.backend=kubernetes: {shorten(said, 300)}") from None
