"""Every environment file pins the same stack as pyproject.toml, so `mlflow run .` with conda
builds what `make` builds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest
import tomllib
import yaml
from conftest import REPO

ENV_FILES = [REPO / "conda.yml", REPO / "environment.yml", *sorted(REPO.glob("src/*/conda.yml"))]


def pins(requirements: list[str]) -> dict[str, str]:
    return {r.split("==")[0].lower(): r.split("==")[1] for r in requirements if "==" in r}


PROJECT = pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])


def test_the_stack_is_pinned():
    assert {
        "mlflow": "3.17.2",
        "hydra-core": "1.3.8",
        "omegaconf": "2.3.1",
        "wandb": "0.31.0",
        "dvc": "3.67.1",
        "cookiecutter": "2.7.1",
        "torch": "2.13.0",
    }.items() <= PROJECT.items()


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_conda_env_lists_the_same_pins(path):
    env = yaml.safe_load(path.read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == PROJECT
    assert any(line.startswith("-e") for line in pip_section), "sheldon itself must be installed"


def test_every_step_has_a_conda_env():
    for step in REPO.glob("src/*/MLproject"):
        assert yaml.safe_load(step.read_text())["conda_env"] == "conda.yml"
        assert (step.parent / "conda.yml").is_file()


def test_make_reinstalls_when_a_dependency_list_changes_not_when_pyproject_is_touched(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)

    def installs() -> bool:
        dry_run = subprocess.run(["make", "-n", "setup"], cwd=tmp_path, capture_output=True, text=True)
        return "pip install" in dry_run.stdout

    assert installs()  # a new clone
    stamp = re.search(
        r"touch (\S+)",
        subprocess.run(["make", "-n", "setup"], cwd=tmp_path, capture_output=True, text=True).stdout,
    )[1]
    (tmp_path / stamp).parent.mkdir()
    (tmp_path / stamp).touch()
    assert not installs()
    later = time.time() + 60
    os.utime(tmp_path / "pyproject.toml", (later, later))  # a checkout rewrote it
    assert not installs()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"ruff==0.17.6"', '"ruff==0.17.5"'))
    assert installs()
