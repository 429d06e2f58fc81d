"""Fixtures shared by every test: the real config composed once, and a temporary copy of the
repository (helpers/project.py) whose pipeline runs for real. Every test under tests/e2e/ is
marked e2e here, and only those: where a test lives says how it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.checkout import REPO
from helpers.project import SHRUNK, Project, make_project
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

sys.path.insert(0, str(REPO))  # the repo's root: tests import main.py


@pytest.fixture(scope="session")
def config() -> DictConfig:
    """The real config.yaml, composed by Hydra as main.py sees it."""
    with initialize_config_dir(config_dir=str(REPO), version_base=None):
        return compose(config_name="config")


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Project:
    """One repo copy shared by the end-to-end tests (a new tracking db costs ~6 s)."""
    return make_project(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="session")
def full_run(project: Project) -> subprocess.CompletedProcess:
    """The whole pipeline, once, on the shrunk config."""
    result = project.mlflow_run(hydra_options=SHRUNK)
    assert result.returncode == 0, result.output[-4000:]
    return result


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ e2e: the folder is the one place that says so."""
    e2e = Path(__file__).parent / "e2e"
    for item in items:
        if e2e in item.path.parents:
            item.add_marker(pytest.mark.e2e)
