"""The commands the docs show (README.md and docs/**/*.md), as a reader types them, and the one
list of those the walk (tests/e2e/test_docs_e2e.py) does not run, each with its reason
(tests/project/test_docs.py checks the list is whole and current)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from helpers.checkout import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}

# A command the walk does not run, and why. "covered: <test>" names the test that runs it (or
# what it shows) in a setting the walk cannot give; that test must exist.
UV = "tests/e2e/test_uv_e2e.py::test_every_step_runs_in_its_own_uv_environment_then_is_cached"
RAY = "tests/engine/test_ray_cluster.py::"
K8S = "tests/engine/test_kubernetes.py::"
TEAM = "tests/serving/test_team_server.py::"
TWO_CLONES = (
    "tests/e2e/test_team_server_e2e.py::test_two_clones_share_the_team_server_its_bucket_and_the_dvc_remote"
)
DOCKER = f"{K8S}test_the_example_config_goes_as_far_as_docker"
CONDA = "needs conda, which no machine of this project has"
NOT_RUN: dict[str, str] = {
    "make test": "the walk is part of it: CI runs it (.ci/run)",
    "conda env create -f environment.yml": CONDA,
    "conda activate sheldon": CONDA,
    "mlflow run .": f"each step in a conda environment: {CONDA}",
    "make run ENV_MANAGER=uv": f"covered: {UV}",
    'eval "$(python -m sheldon.engine.environments uv)" && mlflow run . --env-manager uv': f"covered: {UV}",
    "ray start --head --port 6379": "needs a Ray cluster of several machines",
    "export RAY_ADDRESS=<head>:6379 MLFLOW_TRACKING_URI=http://<tracking host>:5000": "names a Ray cluster",
    "python main.py -m hydra/launcher=ray train_model.lr=0.001,0.003": (
        f"needs a Ray cluster; covered: {RAY}test_an_address_that_names_no_cluster_is_refused"
    ),
    "python main.py -m hydra/launcher=ray hydra.launcher.ray.init.address=<head>:6379 "
    "train_model.lr=0.001,0.003": (
        f"needs a Ray cluster; covered: {RAY}test_the_address_comes_from_the_config_else_ray_address"
    ),
    "docker build -f deploy/kubernetes/Dockerfile -t registry.example.com/sheldon/step:0.1.0 .": (
        f"needs Docker; covered: {K8S}test_the_step_image_installs_the_pins_of_pyproject"
    ),
    "docker push registry.example.com/sheldon/step:0.1.0": "needs Docker and a registry",
    "export MLFLOW_TRACKING_URI=http://mlflow.example.com:5000": "names a team's server",
    "python main.py main.backend=kubernetes main.backend_config=deploy/kubernetes/backend-config.json": (
        f"needs a cluster; covered: {DOCKER}"
    ),
    "python main.py main.backend=kubernetes main.backend_config=norepo.json": (
        f"a file the reader writes; covered: {K8S}test_a_bad_backend_setting_is_one_line"
    ),
    "python main.py main.backend=kubernetes main.backend_config=nojob.json": (
        f"a file the reader writes; covered: {K8S}test_a_bad_backend_setting_is_one_line"
    ),
    "KUBE_MLFLOW_TRACKING_URI=http://mlflow.example.com:5000 python main.py main.backend=kubernetes "
    "main.backend_config=deploy/kubernetes/backend-config.json": (
        f"what it prints depends on this machine's Docker; covered: {DOCKER}"
    ),
    "make fashion-mnist": "installs a Debian package (CI runs it: .ci/run)",
    'mlflow run . --env-manager local -P hydra_options="+dataset=fashion_mnist"': (
        "70,000 images; covered: "
        "tests/e2e/test_train_model_e2e.py::test_fashion_mnist_runs_through_the_whole_pipeline"
    ),
    "dvc remote add -d team s3://my-bucket/sheldon/dvc": (f"names a team's bucket; covered: {TWO_CLONES}"),
    "dvc remote modify team endpointurl https://minio.example.org": "names a team's object store",
    "make server": (f"runs until Ctrl-C; covered: {TWO_CLONES}"),
    "export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...": "a team's credentials",
    "export AWS_ENDPOINT_URL=https://minio.example.org": "names a team's object store",
    "make server DB=postgresql://mlflow@db.example.org/mlflow ARTIFACTS=s3://team-bucket/mlflow "
    "SERVER_PORT=5000": "needs a team's PostgreSQL and bucket",
    "export MLFLOW_TRACKING_URI=http://mlflow.example.org:5000": (
        f"names a team's server; covered: {TWO_CLONES}"
    ),
    "make run                     # the server's keys were revoked after it started": (
        f"needs a team's bucket; covered: {TEAM}"
        "test_a_pipeline_that_would_write_to_a_bucket_it_has_no_credentials_for_stops_first"
    ),
    "make server                  # keys the bucket refuses / none / a bucket that does not exist": (
        f"needs a team's bucket; covered: {TEAM}test_the_server_refuses_an_object_store_it_cannot_use"
    ),
    "cookiecutter cookie-mlflow-step -o src": "asks at the keyboard; the walk runs it with --no-input",
    "python -m sheldon.engine.environments uv": (
        "prints this machine's pip settings; covered: tests/engine/test_environment.py::"
        "test_uv_gets_the_sources_pip_is_configured_with"
    ),
    'mlflow run . --env-manager local -P steps=test_model -P hydra_options="test_model.source='
    'package://debian/fashion-mnist"': "70,000 images: Debian's dataset-fashion-mnist",
    "wandb login [your API key]": "W&B's cloud cannot be reached from here",
    "wandb sync wandb/offline-run-*": "W&B's cloud cannot be reached from here",
    "export MLFLOW_TRACKING_URI=http://<tracking host>:5000": "names a team's server",
    ".venv/bin/torchrun --nnodes=2 --node_rank=<0 on the first node, 1 on the second> --nproc_per_node=4 "
    "--master_addr=<the first node's address> --master_port=29500 src/train_model/run.py "
    "--splits runs:/<preprocess run id>/splits --nproc_per_node 4 --epochs 8": (
        "needs several machines; covered: tests/e2e/test_train_model_e2e.py::"
        "test_ddp_on_two_cpu_processes_through_the_real_step_matches_one_process"
    ),
}


@dataclass(frozen=True)
class Command:
    text: str  # as the reader types it: continuation lines joined, the trailing comment dropped
    where: str  # file:line
    shown: str = ""  # a transcript's line as shown, its comment included (NOT_RUN may name it so)
    expected: tuple[str, ...] = ()  # a transcript's lines under it: what it must print


def strip_comment(line: str) -> str:
    """A shell line without its trailing `# comment` (a # outside quotes, after a space)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def documented_commands(path: Path) -> list[Command]:
    """The commands of a Markdown file: every line of a shell block (continuations joined), and
    every `$ ` line of a plain block, with the lines it shows under it. A block may be indented
    (in a list item): its lines are read without that indent."""
    commands: list[Command] = []
    lines = path.read_text().splitlines()
    language, start, indent = None, 0, 0
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            if language is None:
                indent = len(line) - len(line.lstrip())
                language, start = line.lstrip()[3:].strip() or "plain", number
                continue
            block = [text[indent:] if text[:indent].isspace() else text for text in lines[start : number - 1]]
            language_of_block = language
            language = None
            where = f"{path.relative_to(REPO)}:{start}"
            if language_of_block in SHELL_BLOCKS:
                commands += [Command(text, where) for text in shell_lines(block)]
            elif language_of_block == "plain":
                commands += transcript(block, where)
    return commands


def shell_lines(block: list[str]) -> list[str]:
    joined, pending = [], ""
    for line in block:
        if line.rstrip().endswith("\\"):
            pending += line.strip()[:-1].rstrip() + " "
            continue
        text = strip_comment(pending + line.strip())
        pending = ""
        if text:
            joined.append(text)
    return joined


def transcript(block: list[str], where: str) -> list[Command]:
    commands: list[Command] = []
    for line in block:
        if line.startswith("$ "):
            commands.append(Command(strip_comment(line[2:].strip()), where, line[2:].strip()))
        elif commands and line.strip():
            last = commands[-1]
            commands[-1] = replace(last, expected=(*last.expected, line.strip()))
    return commands


def every_command() -> list[Command]:
    return [command for doc in DOCS for command in documented_commands(doc)]


def not_run_key(command: Command) -> str | None:
    """The NOT_RUN entry of a command: a transcript's line as shown, else the command's text."""
    return next((key for key in (command.shown, command.text) if key in NOT_RUN), None)


# Commands that serve until Ctrl-C, and the path that answers once they serve: the walk starts
# each in the background on a free port (the docs' port in later commands becomes it), goes on
# once it answers, and stops it with Ctrl-C at the end.
SERVERS = {"make serve": ("5001", "/ping")}

# What the reader fills in, as the walk fills it: {name: (pattern, how)}; see Walk.fill.
PLACEHOLDERS = re.compile(r"<[a-z_ ]+>|example\.(org|com)|/mnt/shared")


def fill_placeholders(text: str, values: dict) -> str | None:
    """The command with the reader's placeholders filled in, or None where the walk has no value."""
    fills = {
        "<download_dataset run id>": values.get("raw_run", "RUN"),
        "<run id>": values.get("raw_run", "RUN"),
        "<overrides>": "train_model.lr=0.002",
        "<pipeline run>": values.get("pipeline", "RUN"),
        "<other pipeline run>": values.get("other_pipeline", "RUN"),
        "https://example.org/digits.zip": values.get("server", "http://127.0.0.1") + "/digits.zip",
        "/mnt/shared": values.get("shared", "/tmp"),
    }
    fills |= {f"127.0.0.1:{shown}": f"127.0.0.1:{port}" for shown, port in values.get("ports", {}).items()}
    for placeholder, value in fills.items():
        text = text.replace(placeholder, value)
    return None if PLACEHOLDERS.search(text) else text
