"""Steps on Kubernetes (main.backend=kubernetes), as far as they go without a cluster or a Docker
daemon: the settings are checked by MLflow's kubernetes backend itself, the job template renders
through MLflow into a Job the Kubernetes client accepts, the step image pins pyproject.toml's stack,
the backend reaches each step's launch, and every bad setting is one line before anything runs."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import kubernetes
import mlflow
import pytest
import tomllib
import yaml
from helpers.checkout import REPO
from helpers.project import default_experiment_is_empty, said
from kubernetes.client import ApiClient
from mlflow.projects.kubernetes import KubernetesSubmittedRun
from omegaconf import OmegaConf

from sheldon.core.errors import StepError
from sheldon.core.paths import step_dir
from sheldon.engine.backends import Backend, kubernetes_config, resolve_backend
from sheldon.engine.launchers.kubernetes import LaunchedJob, job_definition, kubernetes_project, start_job
from sheldon.engine.launchers.prestart import Prestarted
from sheldon.engine.plan import PREPARE_AHEAD, make_plan, prepare
from sheldon.step.artifacts import inputs_folder

sys.path.insert(0, str(REPO))
import main  # noqa: E402

DEPLOY = REPO / "deploy" / "kubernetes"
EXAMPLE = "deploy/kubernetes/backend-config.json"
SERVER = "http://mlflow.example:5000"  # the store a cluster's pods log to; never contacted here
IMAGE, DIGEST = "registry.example.com/sheldon/steps:abc1234", "sha256:" + "0" * 64  # what MLflow pushed
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # what Kubernetes takes as a name


def docker_runs() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True).returncode == 0


needs_no_docker = pytest.mark.skipif(docker_runs(), reason="a Docker daemon runs here: MLflow would build")


@pytest.fixture
def pods_store(monkeypatch):
    """The tracking server the pods reach, as a user names it for them."""
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", SERVER)


def with_main(config, **settings):
    changed = copy.deepcopy(config)
    OmegaConf.update(changed, "main", settings, merge=True)
    return changed


def step_params(config, step: str) -> dict[str, str]:
    """What the engine launches a step with: its parameters and its inputs' URIs."""
    params, inputs = main.STEPS.settings(config, step)
    return params | {name: f"runs:/{'0' * 32}/{ref.split('/')[1]}" for name, ref in inputs.items()}


def test_the_step_image_installs_the_pins_of_pyproject():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    installed = re.findall(r"^\s+\"?([A-Za-z0-9_.\[\]-]+==[^\s\\\"]+)", dockerfile, re.MULTILINE)
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(installed) == sorted(pinned)
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile  # CPU torch, a build arg


def test_the_example_config_is_what_mlflows_kubernetes_backend_takes():
    config = kubernetes_config(EXAMPLE)  # parsed by MLflow's _parse_kubernetes_config
    assert config["kube-job-template-path"] == str(DEPLOY / "job-template.yaml")  # from the repo root
    assert config["kube-job-template"] == yaml.safe_load((DEPLOY / "job-template.yaml").read_text())
    assert {"kube-context", "repository-uri", "step-image"} <= config.keys()


@pytest.fixture
def rendered(config, monkeypatch, pods_store):
    """Each step's Job as a launch makes it, MLflow filling in the real template."""
    monkeypatch.setenv("WANDB_PROJECT", "sheldon")
    backend, run_id = kubernetes_config(EXAMPLE), "1" * 32

    def render(step: str) -> dict:
        project = kubernetes_project(step, backend)
        template = backend["kube-job-template"]
        return job_definition(project, step_params(config, step), IMAGE, DIGEST, run_id, "7", template)

    yield render
    shutil.rmtree(inputs_folder(run_id), ignore_errors=True)  # MLflow's folder for `path` parameters
    assert backend["kube-job-template"]["spec"]["template"]["spec"]["containers"][0]["env"] == []  # a copy


@pytest.mark.parametrize("step", main._steps)
def test_each_steps_job_is_one_kubernetes_accepts(rendered, step):
    job = rendered(step)
    read = ApiClient().deserialize(SimpleNamespace(data=json.dumps(job)), "V1Job")  # raises if not a Job
    assert read.spec.template.spec.containers[0].env[0].name == "MLFLOW_RUN_ID"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert DNS_LABEL.fullmatch(container["name"]) and DNS_LABEL.fullmatch(job["metadata"]["name"])
    assert container["image"] == f"{IMAGE}@{DIGEST}"
    assert container["command"][:2] == ["python", "run.py"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == SERVER and env["MLFLOW_RUN_ID"] == "1" * 32
    assert env["MLFLOW_EXPERIMENT_ID"] == "7" and env["WANDB_PROJECT"] == "sheldon"


def test_a_json_parameter_reaches_the_script_as_it_is(rendered, config):
    """A container's command is run without a shell: each argument must be the value itself."""
    command = rendered("train_model")["spec"]["template"]["spec"]["containers"][0]["command"]
    model = json.loads(command[command.index("--model") + 1])
    assert model["_target_"] == config.train_model.model._target_


def test_the_backend_of_config_yaml_is_the_plans(config, pods_store):
    plan = make_plan(with_main(config, backend="kubernetes", backend_config=EXAMPLE), main.STEPS)
    assert plan.backend == Backend("kubernetes", kubernetes_config(EXAMPLE))
    assert make_plan(config, main.STEPS).backend == Backend("local", {})  # the default


@needs_no_docker
@pytest.mark.parametrize("step", main._steps)
def test_each_steps_launch_takes_the_kubernetes_path(config, step, tmp_path, pods_store):
    """MLflow's kubernetes backend, for real, up to what this machine lacks: Docker's daemon."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        backend = make_plan(
            with_main(config, backend="kubernetes", backend_config=EXAMPLE), main.STEPS
        ).backend
        with pytest.raises(StepError) as stopped:
            start_job(step, step_params(config, step), "0", backend.config)
    finally:
        mlflow.set_tracking_uri(None)
    assert re.match(rf"cannot launch {step} on Kubernetes: .*[Dd]ocker", str(stopped.value))
    assert not (tmp_path / "mlflow.db").exists()  # Docker is checked before a run opens: no run


def write(path, content) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


GOOD = {
    "kube-context": "docker-desktop",
    "repository-uri": "registry.example.com/sheldon/steps",
    "kube-job-template-path": "deploy/kubernetes/job-template.yaml",
    "step-image": "registry.example.com/sheldon/step:0.1.0",
}


def without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    "backend, settings, complaint",
    [
        ("slurm", GOOD, "main.backend='slurm': use one of local, kubernetes"),
        ("kubernetes", None, "main.backend=kubernetes needs main.backend_config"),
        ("kubernetes", "missing.json", "main.backend_config=missing.json: no such file"),
        ("kubernetes", "{not json: [", "not JSON or YAML: line 1, column 1"),
        ("kubernetes", "[1, 2]", "expected a mapping of settings, found list"),
        ("kubernetes", without("repository-uri"), "Could not find 'repository-uri' in backend_config."),
        (
            "kubernetes",
            without("kube-job-template-path"),
            "'kube-job-template-path' attribute must be specified in backend_config.",
        ),
        (
            "kubernetes",
            GOOD | {"kube-job-template-path": "deploy/kubernetes/nosuch.yaml"},
            "Could not find 'kube-job-template-path': ",
        ),
        ("kubernetes", without("step-image"), "Could not find 'step-image'"),
    ],
    ids=[
        "unknown-backend",
        "no-config",
        "config-missing",
        "config-not-yaml",
        "config-not-a-mapping",
        "no-repository-uri",
        "no-template-path",
        "template-missing",
        "no-step-image",
    ],
)
def test_a_bad_backend_setting_is_one_line(tmp_path, pods_store, backend, settings, complaint):
    if settings is None:
        path = ""
    elif settings == "missing.json":
        path = settings
    else:
        path = write(tmp_path / "backend.json", settings)
    with pytest.raises(StepError, match=re.escape(complaint)) as stopped:
        resolve_backend(backend, path)
    assert "\n" not in str(stopped.value)


@pytest.mark.parametrize(
    "template, complaint",
    [
        ("kind: Job\nmetadata: {namespace: default}\nspec: [", "is not YAML: line 3, column 8"),
        (
            "kind: Job\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: x}]}}}",
            "it needs kind: Job, metadata.namespace",
        ),
        (
            "kind: Job\nmetadata: {namespace: default}\nspec: {template: {spec: {containers: [{env: [x]}]}}}",
            "not a Kubernetes Job template: Invalid value for `name`, must not be `None`",
        ),
    ],
    ids=["not-yaml", "no-namespace", "env-not-a-list-of-variables"],
)
def test_a_bad_job_template_is_one_line(tmp_path, pods_store, template, complaint):
    settings = GOOD | {"kube-job-template-path": write(tmp_path / "job.yaml", template)}
    with pytest.raises(StepError, match=re.escape(complaint)):
        resolve_backend("kubernetes", write(tmp_path / "backend.json", settings))


def test_yaml_settings_do_as_well_as_json(tmp_path, pods_store):
    path = write(tmp_path / "backend.yaml", yaml.safe_dump(GOOD))
    assert kubernetes_config(path) == kubernetes_config(EXAMPLE)


def test_a_store_in_a_file_here_is_out_of_the_pods_reach(monkeypatch):
    monkeypatch.delenv("KUBE_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    with pytest.raises(StepError, match="the steps' pods cannot reach the tracking store sqlite:///"):
        resolve_backend("kubernetes", EXAMPLE)


@pytest.mark.parametrize(
    "override, complaint",
    [
        ("main.backend=slurm", "error: main.backend='slurm': use one of local, kubernetes"),
        (
            "main.backend=kubernetes main.backend_config=deploy/kubernetes/nosuch.json",
            "error: main.backend_config=deploy/kubernetes/nosuch.json: no such file",
        ),
    ],
    ids=["unknown-backend", "config-missing"],
)
def test_a_bad_backend_stops_the_pipeline_with_one_line_and_no_run(project, override, complaint):
    before = len(project.runs())
    result = project.run("python", "main.py", *override.split())
    assert result.returncode == 1
    assert len(said(result.stderr)) == 1 and result.stderr.startswith(complaint), result.stderr
    assert len(project.runs()) == before


def test_mlflow_run_with_a_bad_backend_leaves_no_run(project):
    """`mlflow run .` opens a run before main.py starts: it goes too."""
    before = len(project.runs())
    result = project.mlflow_run(hydra_options="main.backend=slurm")
    assert result.returncode == 1 and "error: main.backend='slurm'" in result.stderr
    assert len(project.runs()) == before and default_experiment_is_empty(project)


@needs_no_docker
def test_the_example_config_goes_as_far_as_docker(project):
    """config.yaml's options, through planning, to the first thing MLflow's backend does here."""
    before = len(project.runs())
    project.env["KUBE_MLFLOW_TRACKING_URI"] = SERVER
    try:
        result = project.run("python", "main.py", "main.backend=kubernetes", f"main.backend_config={EXAMPLE}")
    finally:
        del project.env["KUBE_MLFLOW_TRACKING_URI"]
    assert result.returncode == 1
    assert len(said(result.stderr)) == 1, result.stderr
    assert re.match(r"error: main.backend=kubernetes: .*[Dd]ocker", result.stderr)
    assert len(project.runs()) == before


def test_a_template_may_leave_out_what_mlflow_fills_in(tmp_path, pods_store):
    template = "kind: Job\nmetadata: {namespace: ml}\nspec: {template: {spec: {containers: [{}]}}}"
    settings = GOOD | {"kube-job-template-path": write(tmp_path / "job.yaml", template)}
    assert resolve_backend("kubernetes", write(tmp_path / "backend.json", settings)).name == "kubernetes"


@pytest.fixture
def cluster_gone(project):
    """A Kubernetes API where nothing listens, and a step run of a Job of it in a real store."""
    previous = kubernetes.client.Configuration.get_default_copy()
    gone = kubernetes.client.Configuration(host="http://127.0.0.1:1")
    kubernetes.client.Configuration.set_default(gone)
    mlflow.set_tracking_uri(project.tracking_uri)
    experiment_id = mlflow.set_experiment("kubernetes-faults").experiment_id
    run_id = mlflow.MlflowClient().create_run(experiment_id).info.run_id
    try:
        job = KubernetesSubmittedRun(run_id, "train-model-1", "default")
        yield LaunchedJob(run_id, job, "train-model-1", "default")
    finally:
        kubernetes.client.Configuration.set_default(previous)
        mlflow.set_tracking_uri(None)


def test_a_cluster_gone_while_a_step_runs_fails_its_run_with_one_line(cluster_gone, project):
    with pytest.raises(StepError, match=r"^lost track of Kubernetes Job train-model-1: .*") as stopped:
        cluster_gone.wait({"sheldon.step": "train_model"})
    assert "\n" not in str(stopped.value)
    run = project.client().get_run(cluster_gone.run_id)
    assert run.info.status == "FAILED" and run.data.tags["sheldon.step"] == "train_model"
    assert run.data.tags["sheldon.stopped"].startswith("its Kubernetes Job went out of reach")


def test_stopping_a_job_out_of_reach_warns_and_goes_on(cluster_gone, capsys):
    cluster_gone.stop()
    [warning] = said(capsys.readouterr().err)  # and MLflow's own INFO line, "Cancelling job."
    assert warning.startswith("warning: Kubernetes Job train-model-1 not deleted: ") and "refused" in warning


@pytest.fixture
def kubeconfig(tmp_path) -> dict[str, str]:
    """The environment of a process whose kubeconfig's context docker-desktop names a cluster where
    nothing listens (the client reads KUBECONFIG once, when it is imported: hence a process)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "docker-desktop", "context": {"cluster": "gone", "user": "me"}}],
        "current-context": "docker-desktop",
    }
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    return env | {"KUBECONFIG": write(tmp_path / "kubeconfig", yaml.safe_dump(config))}


def python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)


def test_a_job_is_submitted_to_the_kube_context_of_the_config(rendered, kubeconfig, tmp_path):
    job = write(tmp_path / "job.json", rendered("preprocess"))
    submit = (
        "import json, sys; from sheldon.engine.launchers.kubernetes import submit; "
        "submit(json.load(open(sys.argv[1])), sys.argv[2])"
    )
    result = python(submit, kubeconfig, job, kubernetes_config(EXAMPLE)["kube-context"])
    # The client took the Job, and sent it to the context's cluster, which is gone.
    assert "MaxRetryError" in result.stderr, result.stderr
    assert re.search(r"127\.0\.0\.1.*/apis/batch/v1/namespaces/default/jobs", result.stderr)


@pytest.mark.parametrize(
    "context, kubeconfig_file, complaint",
    [
        ("docker-desktop", True, ""),
        ("prod", True, "kube-context 'prod' is not in the kubeconfig (its contexts: docker-desktop)"),
        ("docker-desktop", False, "kube-context 'docker-desktop', but no kubeconfig: Invalid kube-config"),
    ],
    ids=["in-it", "not-in-it", "no-kubeconfig"],
)
def test_the_kube_context_is_checked(kubeconfig, tmp_path, context, kubeconfig_file, complaint):
    env = kubeconfig if kubeconfig_file else kubeconfig | {"KUBECONFIG": str(tmp_path / "none")}
    check = (
        "import sys; from sheldon.engine.backends import check_kube_context; check_kube_context(sys.argv[1])"
    )
    result = python(f"{check}; print('fine')", env, context)
    assert complaint in result.stderr if complaint else result.stdout == "fine\n", result.stderr


def test_no_interpreter_starts_ahead_for_a_step_that_runs_in_a_pod(pods_store):
    backend = Backend("kubernetes", kubernetes_config(EXAMPLE))
    with Prestarted() as prestarted:
        prepare(main._steps[:PREPARE_AHEAD], "local", prestarted, backend)
        assert all(prestarted.run(step_dir(step), "python run.py", {}) is None for step in main._steps)
