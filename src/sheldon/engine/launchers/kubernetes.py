"""A step as a Kubernetes Job (main.backend=kubernetes), launched as MLflow's kubernetes backend
launches a project (`mlflow run --backend kubernetes --build-image`), waited for and stopped through
MLflow's KubernetesSubmittedRun. The steps' MLprojects name conda.yml, for local and conda runs;
on Kubernetes, the backend config's step image stands as their docker_env (sheldon/engine/backends.py).
One difference: the Job's command is the step's argv. MLflow's run_kubernetes_job shell-quotes each
argument, and no shell reads a container's command, so a JSON parameter (train_model's model spec)
would reach the script wrapped in quotes."""

from __future__ import annotations

import copy
import os
import re
import shlex
import sys
from typing import TYPE_CHECKING, Any

import kubernetes
import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from sheldon.core.errors import StepError, first_line, shorten
from sheldon.core.output import is_verbose
from sheldon.core.paths import step_dir
from sheldon.core.processes import PIPELINE_ENV
from sheldon.core.vocabulary import BACKEND_TAG, RUN_NAME_TAG, TRIAL_ENV
from sheldon.engine.backends import STEP_IMAGE
from sheldon.engine.launchers.runs import ENTRY_POINT, Launched, end_run_if_running
from sheldon.engine.mlflow_internals import (
    MLFLOW_DOCKER_IMAGE_ID,
    MLFLOW_PROJECT_ENV,
    Project,
    build_docker_image,
    create_project_run,
    fetch_and_validate_project,
    get_entry_point_command,
    get_kubernetes_job_definition,
    get_run_env_vars,
    kubernetes_submitted_run,
    load_kube_context,
    load_project,
    push_image_to_registry,
    validate_docker_env,
    validate_docker_installation,
)
from sheldon.step.artifacts import inputs_folder

if TYPE_CHECKING:
    from sheldon.engine.mlflow_internals import KubernetesSubmittedRun

# What the pipeline gives its steps through the environment (pipeline.set_up_environment), passed to
# a step's pod, which sees nothing else of this machine's environment: secrets come from the job
# template (deploy/kubernetes/job-template.yaml).
JOB_ENV = (PIPELINE_ENV, TRIAL_ENV, "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_MODE")


class LaunchedJob(Launched):
    """A step's MLflow run and the Kubernetes Job running its entry point."""

    def __init__(self, run_id: str, job: KubernetesSubmittedRun, name: str, namespace: str) -> None:
        self.run_id = run_id
        self.job = job
        self.name, self.namespace = name, namespace

    def succeeded(self) -> bool:
        try:
            return self.job.wait()  # MLflow polls the Job's status every 5 s
        except Exception as err:  # the cluster went out of reach (a stop signal is no Exception)
            why = shorten(first_line(err))
            end_run_if_running(self.run_id, RunStatus.FAILED, f"its Kubernetes Job went out of reach: {why}")
            raise StepError(f"lost track of Kubernetes Job {self.name}: {why}") from None

    def stop(self) -> None:
        """Delete the Job and its pods: MLflow's cancel deletes the Job alone, whose running pods
        Kubernetes then keeps (a Job's are orphaned unless the delete says otherwise)."""
        try:
            self.job.cancel()
            kubernetes.client.CoreV1Api().delete_collection_namespaced_pod(
                self.namespace, label_selector=f"job-name={self.name}"
            )
        except Exception as err:  # out of reach: its run is ended KILLED all the same
            why = shorten(first_line(err))
            print(f"warning: Kubernetes Job {self.name} not deleted: {why}", file=sys.stderr)


def kubernetes_project(step: str, config: dict[str, Any]) -> Project:
    """The step's MLflow project as the kubernetes backend takes it: the step image as its
    docker_env, and a name Kubernetes accepts for the Job and its container (no `_`)."""
    project = load_project(str(step_dir(step)))
    project.docker_env = {"image": config[STEP_IMAGE]}
    project.name = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-")
    validate_docker_env(project)
    return project


def job_definition(
    project: Project,
    params: dict[str, str],
    image: str,
    digest: str,
    run_id: str,
    experiment_id: str,
    template: dict,
) -> dict[str, Any]:
    """The Job of a step's run, as MLflow makes it from the template: the step's image (by digest),
    its argv, MLflow's environment for the run and the pipeline's for its steps."""
    commands = get_entry_point_command(project, ENTRY_POINT, params, str(inputs_folder(run_id)))
    argv = [arg for command in commands for arg in shlex.split(command)]
    env = get_run_env_vars(run_id, experiment_id) | {n: os.environ[n] for n in JOB_ENV if n in os.environ}
    return get_kubernetes_job_definition(project.name, image, digest, argv, env, copy.deepcopy(template))


def submit(job: dict[str, Any], kube_context: str | None) -> tuple[str, str]:
    """Create the Job in the cluster of the kube context, as MLflow does; its name and namespace."""
    load_kube_context(kube_context)
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    kubernetes.client.BatchV1Api().create_namespaced_job(namespace=namespace, body=job)
    return name, namespace


def start_job(step: str, params: dict[str, str], experiment_id: str, config: dict[str, Any]) -> LaunchedJob:
    """Start src/<step>'s entry point as a Kubernetes Job, its run nested under the active run:
    MLflow builds the step's folder into an image FROM the config's step image and pushes it to its
    repository-uri; the Job made from its template is submitted in the config's kube-context.
    Docker is checked before the run opens, so a machine without it is left no run."""
    work_dir = str(step_dir(step))
    try:
        fetch_and_validate_project(work_dir, ENTRY_POINT, params)
        project = kubernetes_project(step, config)
        validate_docker_installation()
    except MlflowException as err:
        raise StepError(f"cannot launch {step} on Kubernetes: {first_line(err.message)}") from None
    run = create_project_run(work_dir, experiment_id, ENTRY_POINT, params)
    run_id = run.info.run_id
    client = mlflow.MlflowClient()
    for name, value in {RUN_NAME_TAG: step, BACKEND_TAG: "kubernetes", MLFLOW_PROJECT_ENV: "docker"}.items():
        client.set_tag(run_id, name, value)
    try:
        image = build_docker_image(work_dir, config["repository-uri"], config[STEP_IMAGE], run_id)
        digest = push_image_to_registry(image.tags[0])
        client.set_tag(run_id, MLFLOW_DOCKER_IMAGE_ID, digest)
        job = job_definition(
            project, params, image.tags[0], digest, run_id, experiment_id, config["kube-job-template"]
        )
        name, namespace = submit(job, config.get("kube-context"))
    except Exception as err:  # Docker's or Kubernetes' (build, push, submission): the run must not stay open
        why = shorten(first_line(getattr(err, "message", None) or err))
        end_run_if_running(run_id, RunStatus.FAILED, f"could not be started on Kubernetes: {why}")
        raise StepError(f"cannot launch {step} on Kubernetes: {why}") from None
    if is_verbose():
        print(f"  Kubernetes Job {name} in namespace {namespace} (MLflow run {run_id})", flush=True)
    return LaunchedJob(run_id, kubernetes_submitted_run(run_id, name, namespace), name, namespace)
