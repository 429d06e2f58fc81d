"""sheldon.engine.mlflow_internals against the MLflow installed: one test per entry point, each on
what sheldon's launchers rely on from it, so that an MLflow upgrade which changes any of them fails
here first, by name. Docker's daemon and Kubernetes' API are small HTTP servers on 127.0.0.1 that
answer as they do; MLflow and the Docker and Kubernetes clients are the real ones."""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes
import mlflow
import pytest
import tomllib
import yaml
from helpers.checkout import REPO
from helpers.project import BIN
from mlflow.exceptions import MlflowException

from sheldon.engine import mlflow_internals as internals

SHELDON = REPO / "src" / "sheldon"
DEPLOY = REPO / "deploy" / "kubernetes"

# A project of two parameters whose command writes down what it was started with.
TINY_MLPROJECT = """\
name: tiny
entry_points:
  main:
    parameters:
      data: path
      greeting: {type: string, default: hello}
    command: "python tiny.py {greeting} {data}"
"""
TINY_SCRIPT = """\
import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": env}, open("seen.json", "w"))
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "MLproject").write_text(TINY_MLPROJECT)
    (folder / "tiny.py").write_text(TINY_SCRIPT)
    return folder


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """A tracking store of these tests' own (a new one costs seconds: one for the module)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture
def experiment(store_uri, tmp_path) -> Iterator[str]:
    """A new experiment in the tests' store, its artifacts under tmp_path, as the tracking store
    in use; the repo's mlflow.db is never touched."""
    mlflow.set_tracking_uri(store_uri)
    try:
        yield mlflow.create_experiment(tmp_path.name, artifact_location=(tmp_path / "artifacts").as_uri())
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


@contextmanager
def fake_api(answers: dict[tuple[str, str], object]) -> Iterator[tuple[str, list[dict]]]:
    """An HTTP API on 127.0.0.1 standing in for a Docker daemon or a Kubernetes cluster: it answers
    each (method, path) with its JSON (a list: one JSON document a line, as Docker streams), 404
    otherwise; its address, and the requests it was sent."""
    asked: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def answer(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            query = dict(urllib.parse.parse_qsl(url.query))
            asked.append({"method": self.command, "path": url.path, "query": query, "body": body})
            reply = answers.get((self.command, url.path))
            if reply is None:
                self.send_error(404, "Not Found")
                return
            lines = reply if isinstance(reply, list) else [reply]
            data = b"\n".join(json.dumps(line).encode() for line in lines)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def kubernetes_api(answers: dict[tuple[str, str], object]) -> Iterator[list[dict]]:
    """The Kubernetes client's default cluster, as MLflow's handles take it, a fake_api."""
    previous = kubernetes.client.Configuration.get_default_copy()
    with fake_api(answers) as (address, asked):
        kubernetes.client.Configuration.set_default(kubernetes.client.Configuration(host=f"http://{address}"))
        try:
            yield asked
        finally:
            kubernetes.client.Configuration.set_default(previous)


DOCKER_VERSION = {("GET", "/version"): {"ApiVersion": "1.45", "Version": "27.0.0"}}


# The version, and the door


def test_the_installed_mlflow_is_the_one_the_module_was_read_from():
    """An upgrade fails here first: re-read the module's entry points, then move READ_FROM."""
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"mlflow=={internals.READ_FROM}" in pinned
    assert mlflow.__version__ == internals.READ_FROM


# Steps import sheldon.core and sheldon.step, which may not reach the engine: what they take from
# MLflow's inside stays with them (issue 24), this list says what, and no more may join it.
BELOW_THE_ENGINE = {
    ("core/output.py", "mlflow.utils.logging_utils.MLFLOW_LOGGING_STREAM"),
    ("step/artifacts.py", "mlflow.store.artifact.utils.models._parse_model_id_if_present"),
}
INSIDE = ("mlflow.projects", "mlflow.utils", "mlflow.store")


def mlflow_inside_of(tree: ast.Module) -> Iterator[str]:
    """The names a module imports from MLflow's inside: its projects, utils and store modules, and
    any module or name of MLflow's whose name starts with an underscore."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in imported:
            if name.split(".")[0] == "mlflow" and (
                name.startswith(INSIDE) or any(part.startswith("_") for part in name.split("."))
            ):
                yield name


def test_only_mlflow_internals_imports_mlflows_inside():
    found = {
        (str(path.relative_to(SHELDON)), name)
        for path in SHELDON.rglob("*.py")
        if path != SHELDON / "engine" / "mlflow_internals.py"
        for name in mlflow_inside_of(ast.parse(path.read_text()))
    }
    assert found == BELOW_THE_ENGINE, "import it from sheldon.engine.mlflow_internals"


# The project and its run


def test_fetch_and_validate_project_refuses_a_missing_parameter(tiny):
    with pytest.raises(MlflowException, match="No value given for missing parameters: 'data'"):
        internals.fetch_and_validate_project(str(tiny), "main", {})
    with pytest.raises(MlflowException, match="Could not find .*nowhere"):
        internals.fetch_and_validate_project(str(tiny), "nowhere", {"data": "x"})
    assert internals.fetch_and_validate_project(str(tiny), "main", {"data": "x"}) == str(tiny)


def test_load_project_reads_a_steps_mlproject():
    project = internals.load_project(str(REPO / "src" / "evaluate"))
    assert isinstance(project, internals.Project)
    assert project.name == "evaluate" and not project.docker_env  # the kubernetes launcher sets both
    assert Path(project.env_config_path) == REPO / "src" / "evaluate" / "conda.yml"
    parameters = project.get_entry_point("main").parameters
    assert {"model", "splits", "batch_size", "min_accuracy"} <= parameters.keys()
    assert parameters["batch_size"].type == "int" and parameters["batch_size"].default == 512


def test_create_project_run_nests_a_project_run_under_the_active_run(experiment):
    evaluate = str(REPO / "src" / "evaluate")
    with mlflow.start_run(experiment_id=experiment) as parent:
        run = internals.create_project_run(evaluate, experiment, "main", {"model": "runs:/1/model"})
    assert run.info.experiment_id == experiment and run.info.status == "RUNNING"
    run = mlflow.MlflowClient().get_run(run.info.run_id)
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent.info.run_id
    assert tags["mlflow.source.type"] == "PROJECT" and tags["mlflow.project.entryPoint"] == "main"
    assert run.data.params["model"] == "runs:/1/model" and run.data.params["batch_size"] == "512"


def test_get_entry_point_command_fills_the_parameters_and_fetches_paths_into_the_storage_dir(
    experiment, tiny, tmp_path
):
    evaluate = internals.load_project(str(REPO / "src" / "evaluate"))
    storage = tmp_path / "inputs"
    [command] = internals.get_entry_point_command(evaluate, "main", {"model": "runs:/1/model"}, str(storage))
    assert command.startswith("python run.py --model runs:/1/model --splits '' --batch_size 512 ")

    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("hello", "note.txt")
    project, data = internals.load_project(str(tiny)), f"runs:/{run.info.run_id}/note.txt"
    [command] = internals.get_entry_point_command(project, "main", {"data": data}, str(storage))
    fetched = Path(command.split()[-1])
    assert command.startswith("python tiny.py hello ") and fetched.is_relative_to(storage)
    assert fetched.read_text() == "hello"


def test_get_run_env_vars_tell_a_process_its_run_and_store(experiment, store_uri):
    assert internals.get_run_env_vars("1" * 32, experiment) == {
        "MLFLOW_RUN_ID": "1" * 32,
        "MLFLOW_EXPERIMENT_ID": experiment,
        "MLFLOW_TRACKING_URI": store_uri,
    }


def test_run_with_local_backend_starts_the_command_in_the_run_it_is_given(
    experiment, tiny, tmp_path, monkeypatch
):
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    (data := tmp_path / "data.txt").write_text("")
    run = internals.create_project_run(str(tiny), experiment, "main", {"data": str(data)})
    process = internals.run_with_local_backend(
        str(tiny),
        "main",
        {"data": str(data)},
        run_id=run.info.run_id,
        experiment_id=experiment,
        env_manager="local",
        storage_dir=str(tmp_path / "inputs"),
    )
    assert isinstance(process, subprocess.Popen) and process.wait(60) == 0
    seen = json.loads((tiny / "seen.json").read_text())
    assert seen["argv"] == ["hello", str(data)] and seen["cwd"] == str(tiny)
    assert seen["env"]["MLFLOW_RUN_ID"] == run.info.run_id
    # The command itself, started in the run given, and no second run (a second `mlflow run`).
    assert [r.info.run_id for r in mlflow.MlflowClient().search_runs([experiment])] == [run.info.run_id]


def test_shell_command_exception_is_what_mlflows_env_managers_raise():
    from mlflow.utils.process import _exec_cmd  # what MLflow builds uv's, virtualenv's, conda's envs with

    with pytest.raises(internals.ShellCommandException):
        _exec_cmd(["false"])


def test_the_tags_re_exported_are_the_ones_mlflow_shows():
    assert internals.MLFLOW_PROJECT_ENV == "mlflow.project.env"
    assert internals.MLFLOW_DOCKER_IMAGE_ID == "mlflow.docker.image.id"


def test_database_engines_are_the_schemes_of_sqlalchemy_stores():
    assert {"sqlite", "postgresql", "mysql", "mssql"} <= set(internals.DATABASE_ENGINES)
    assert "file" not in internals.DATABASE_ENGINES and "http" not in internals.DATABASE_ENGINES


# The kubernetes backend


def test_parse_kubernetes_backend_config_loads_the_template_and_refuses_a_missing_key():
    settings = {
        "kube-context": "docker-desktop",
        "repository-uri": "registry.example.com/steps",
        "kube-job-template-path": str(DEPLOY / "job-template.yaml"),
    }
    config = internals.parse_kubernetes_backend_config(settings)
    assert config["kube-job-template"] == yaml.safe_load((DEPLOY / "job-template.yaml").read_text())
    for key in ("repository-uri", "kube-job-template-path"):
        with pytest.raises(MlflowException, match=key):
            internals.parse_kubernetes_backend_config({k: v for k, v in settings.items() if k != key})


def test_get_kubernetes_job_definition_fills_the_template(monkeypatch, caplog):
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    template = yaml.safe_load((DEPLOY / "job-template.yaml").read_text())
    with caplog.at_level(logging.INFO, logger="mlflow.projects.kubernetes"):
        job = internals.get_kubernetes_job_definition(
            "evaluate",
            "steps:abc",
            "sha256:0",
            ["python", "run.py"],
            {"MLFLOW_RUN_ID": "1"},
            template,
            announce=False,
        )
    assert job is template and not caplog.records  # filled in place, and silently
    assert job["metadata"]["name"].startswith("evaluate-") and job["metadata"]["namespace"] == "default"
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "evaluate" and container["image"] == "steps:abc@sha256:0"
    assert container["command"] == ["python", "run.py"]
    assert container["env"] == [
        {"name": "MLFLOW_RUN_ID", "value": "1"},
        {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.example:5000"},
    ]
    assert logging.getLogger("mlflow.projects.kubernetes").level == logging.NOTSET  # as it was


def test_load_kube_context_points_the_client_at_the_contexts_cluster(tmp_path):
    """In a process of its own: the Kubernetes client reads KUBECONFIG when it is imported."""
    contexts = {"near": "http://127.0.0.1:1", "far": "http://127.0.0.1:2"}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}} for name, server in contexts.items()],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "me"}} for name in contexts],
        "current-context": "near",
    }
    (kubeconfig := tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    show = (
        "import sys, kubernetes; from sheldon.engine.mlflow_internals import load_kube_context; "
        "load_kube_context(sys.argv[1]); print(kubernetes.client.Configuration.get_default_copy().host)"
    )
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"} | {
        "KUBECONFIG": str(kubeconfig)
    }
    result = subprocess.run([sys.executable, "-c", show, "far"], env=env, capture_output=True, text=True)
    assert result.stdout == "http://127.0.0.1:2\n", result.stderr


def test_kubernetes_submitted_run_waits_for_the_job_and_cancels_it():
    job = "/apis/batch/v1/namespaces/ml/jobs/evaluate-1"
    complete = {
        "kind": "Job",
        "metadata": {"name": "evaluate-1", "namespace": "ml"},
        "status": {
            "startTime": "2024-01-01T00:00:00Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    }
    answers = {("GET", f"{job}/status"): complete, ("DELETE", job): {"kind": "Status", "status": "Success"}}
    with kubernetes_api(answers) as asked:
        submitted = internals.kubernetes_submitted_run("1" * 32, "evaluate-1", "ml")
        assert submitted.run_id == "1" * 32 and submitted.wait() is True
        internals.kubernetes_submitted_run("1" * 32, "evaluate-1", "ml").cancel()
    assert [(a["method"], a["path"]) for a in asked] == [("GET", f"{job}/status"), ("DELETE", job)]


def test_push_image_to_registry_gives_the_registrys_digest(monkeypatch):
    answers = DOCKER_VERSION | {
        ("POST", "/v1.45/images/registry.example.com/steps/push"): [{"status": "Pushed"}],
        ("GET", "/v1.45/distribution/registry.example.com/steps:abc1234/json"): {
            "Descriptor": {"digest": "sha256:" + "d" * 64},
            "Platforms": [],
        },
    }
    with fake_api(answers) as (address, asked):
        monkeypatch.setenv("DOCKER_HOST", f"tcp://{address}")
        assert internals.push_image_to_registry("registry.example.com/steps:abc1234") == "sha256:" + "d" * 64
    [push] = [a for a in asked if a["method"] == "POST"]
    assert push["query"]["tag"] == "abc1234"


def test_build_docker_image_builds_the_folder_from_the_base_image(experiment, tiny, monkeypatch):
    image_id = "sha256:" + "e" * 64
    answers = DOCKER_VERSION | {
        ("POST", "/v1.45/build"): [{"stream": f"Successfully built {'e' * 12}"}],
        ("GET", f"/v1.45/images/{'e' * 12}/json"): {
            "Id": image_id,
            "RepoTags": ["registry.example.com/steps"],
        },
    }
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    with fake_api(answers) as (address, asked):
        monkeypatch.setenv("DOCKER_HOST", f"tcp://{address}")
        image = internals.build_docker_image(
            str(tiny), "registry.example.com/steps", "python:3.11-slim", run_id
        )
    assert image.id == image_id and image.tags == ["registry.example.com/steps"]
    [build] = [a for a in asked if a["path"] == "/v1.45/build"]
    assert build["query"]["t"] == "registry.example.com/steps"  # and its git commit, in a repository
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(build["body"]))) as context:
        names = context.getnames()
        dockerfile = context.extractfile(build["query"]["dockerfile"]).read().decode()
    assert dockerfile.startswith("FROM python:3.11-slim") and any(n.endswith("/tiny.py") for n in names)
    assert mlflow.MlflowClient().get_run(run_id).data.tags[internals.MLFLOW_DOCKER_IMAGE_ID] == image_id


def test_validate_docker_env_needs_a_name_and_an_image():
    project = internals.load_project(str(REPO / "src" / "evaluate"))
    project.docker_env = {"image": "registry.example.com/step:0.1.0"}
    internals.validate_docker_env(project)
    project.docker_env = {}
    with pytest.raises(MlflowException, match="must specify the docker image"):
        internals.validate_docker_env(project)


def test_validate_docker_installation_says_what_docker_info_said(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MlflowException, match="Could not find Docker executable"):
        internals.validate_docker_installation()
    (docker := tmp_path / "docker").write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon'\nexit 1\n"
    )
    docker.chmod(0o755)
    with pytest.raises(MlflowException) as refused:
        internals.validate_docker_installation()
    lines = refused.value.message.strip().splitlines()  # what sheldon's check_docker shows: first and last
    assert lines[0].startswith("Ran `docker info`") and lines[-1] == "Cannot connect to the Docker daemon"
