"""`mlflow run . --env-manager uv` in a temporary copy of the repo, as a user runs it: the root run
and every step in an environment uv builds from its own conda.yml with this machine's Python and
pip's package sources (torch==2.13.0 the local CPU wheel); the next time reused, or cached."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.project import SHRUNK, Project, make_project, said
from mlflow.utils.environment import _PythonEnv
from mlflow.utils.virtualenv import _get_virtualenv_name

from sheldon.engine.environments import built_by, uv_sources

pytestmark = pytest.mark.slow

STEPS = ["download_dataset", "preprocess", "train_model", "evaluate"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Project]:
    """A repo copy whose environments and uv cache live in its temporary folder (filling the cache
    costs ~20 s of downloads, docs/how-to/choose-an-environment.md), removed after: ~1.7 GB."""
    project = make_project(tmp_path_factory.mktemp("uv"))
    built = {"MLFLOW_ENV_ROOT": project.home / "envs", "UV_CACHE_DIR": project.home / "uv-cache"}
    project.env |= uv_sources() | {name: str(path) for name, path in built.items()}
    yield project
    for path in built.values():
        shutil.rmtree(path, ignore_errors=True)


def run_uv(project: Project, steps: list[str], hydra_options: str = SHRUNK) -> subprocess.CompletedProcess:
    return project.run(
        "mlflow", "run", ".", "--env-manager", "uv", "-P", f"steps={','.join(steps)}",
        "-P", f"hydra_options={hydra_options}",
    )  # fmt: skip


def environments(project: Project) -> dict[Path, float]:
    """The environments MLflow built, with the time each was made."""
    return {env: env.stat().st_mtime for env in (project.home / "envs").glob("mlflow-*")}


def step_environment(project: Project, step: str) -> Path:
    """The environment MLflow builds for a step: named for its dependency list."""
    folder = project.root / "src" / step
    name = _get_virtualenv_name(_PythonEnv.from_conda_yaml(folder / "conda.yml"), folder)
    return project.home / "envs" / name


def installed(env: Path, package: str) -> bool:
    return any((env / "lib").glob(f"python3*/site-packages/{package}"))


def summary(output: str) -> dict[str, str]:
    """step -> ran/cached/failed, from the pipeline's summary table."""
    return dict(re.findall(rf"^({'|'.join(STEPS)})\s+(ran|cached|failed)\b", output, re.MULTILINE))


def test_every_step_runs_in_its_own_uv_environment_then_is_cached(project):
    first = run_uv(project, STEPS)
    assert first.returncode == 0, first.output[-4000:]
    assert summary(first.stdout) == dict.fromkeys(STEPS, "ran")
    runs = project.step_runs()
    assert [(r.data.tags["sheldon.step"], r.info.status) for r in runs] == [(s, "FINISHED") for s in STEPS]
    assert {r.data.tags["mlflow.project.env"] for r in runs} == {"uv"}
    built = environments(project)
    lists = {step_environment(project, step) for step in STEPS}  # no two steps import the same packages
    assert len(built) == 1 + len(lists) == 5  # and the root run's
    assert {built_by(env) for env in built} == {"uv"}
    for step in STEPS:
        env = step_environment(project, step)
        assert env in built
        assert "version_info = 3.11" in (env / "pyvenv.cfg").read_text()  # this machine's Python
        assert installed(env, "torch") == (step in ("train_model", "evaluate"))
        assert not installed(env, "sheldon*"), "the library comes from the checkout"

    again = run_uv(project, STEPS)
    assert again.returncode == 0, again.output[-4000:]
    assert summary(again.stdout) == dict.fromkeys(STEPS, "cached")
    assert environments(project) == built  # nothing built again

    # main.verbose=true: MLflow says at INFO that it reuses the environment
    forced = run_uv(project, ["preprocess"], f"{SHRUNK} main.force=preprocess main.verbose=true")
    assert forced.returncode == 0, forced.output[-4000:]
    assert summary(forced.stdout)["preprocess"] == "ran"
    assert f"Environment {step_environment(project, 'preprocess')} already exists" in forced.output
    assert environments(project) == built


def test_an_environment_that_cannot_be_built_fails_its_step_in_one_line(project):
    conda = project.root / "src" / "preprocess" / "conda.yml"
    listed = conda.read_text()
    conda.write_text(listed + "      - sheldon-no-such-package==1.0\n")
    before = {r.info.run_id for r in project.runs()}
    try:
        result = run_uv(project, ["download_dataset", "preprocess", "train_model"])
        broken_env = step_environment(project, "preprocess")
    finally:
        conda.write_text(listed)
    assert result.returncode != 0
    logged = re.compile(r"\d{4}/\d\d/\d\d [\d:]+ [A-Z]+ ")  # MLflow's log records (its WARNINGs, its ERROR)
    lines = [line for line in said(result.stderr) if not logged.match(line)]
    assert lines[-3:] == [
        "error: No solution found when resolving dependencies",  # uv's own, then ours
        "  cause: Because sheldon-no-such-package was not found in the package registry and you require "
        "sheldon-no-such-package==1.0, we can conclude that your requirements are unsatisfiable.",
        "error: preprocess: uv could not build its environment from src/preprocess/conda.yml"
        " (its error is above)",
    ], result.stderr[-3000:]
    assert "Traceback" not in result.output
    new = {r.info.run_name: r.info.status for r in project.runs() if r.info.run_id not in before}
    assert new["pipeline"] == new["preprocess"] == "FAILED"
    assert "train_model" not in new  # never started
    assert not broken_env.exists(), "a half-built environment is removed"
