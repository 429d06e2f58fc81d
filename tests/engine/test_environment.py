"""Every environment file pins the same stack as pyproject.toml, so `mlflow run .` with conda or uv
builds what `make` builds; each step's file pins only what that step imports."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest
import tomllib
import yaml
from helpers.checkout import REPO
from helpers.project import BIN
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sheldon.engine.environments import built_by
from sheldon.engine.plan import resolve_env_manager

ROOT_ENV_FILES = [REPO / "conda.yml", REPO / "environment.yml"]
TEMPLATE_ENV = REPO / "cookie-mlflow-step" / "{{ cookiecutter.step_name }}" / "conda.yml"
STEPS = sorted(p.parent.name for p in REPO.glob("src/*/conda.yml"))
# Packages a step needs that none of its imports names: dvc's S3 remote and s3:// sources.
NOT_IMPORTED = {"download_dataset": {"dvc-s3"}}


def pins(requirements: list[str]) -> dict[str, str]:
    return {r.split("==")[0].lower(): r.split("==")[1] for r in requirements if "==" in r}


def pip_section(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


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
        "uv": "0.13.9",
    }.items() <= PROJECT.items()


@pytest.mark.parametrize("path", [*ROOT_ENV_FILES, TEMPLATE_ENV], ids=lambda p: str(p.relative_to(REPO)))
def test_conda_env_lists_the_same_pins(path):
    assert pins(pip_section(path)) == PROJECT


@pytest.mark.parametrize("path", ROOT_ENV_FILES, ids=lambda p: p.name)
def test_the_root_environment_installs_sheldon(path):
    assert any(line.startswith("-e") for line in pip_section(path)), "sheldon itself must be installed"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@cache
def installed_modules() -> dict[str, list[str]]:
    """Top-level module -> the installed distributions providing it (~0.5 s to read)."""
    return packages_distributions()


def imported_distributions(step: str) -> set[str]:
    """The installed distributions a step's code imports, through the sheldon modules it imports."""
    todo, seen, modules = list((REPO / "src" / step).glob("*.py")), set(), set()
    while todo:
        if (path := todo.pop()) in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            if parts[0] == "sheldon":
                for depth in range(1, len(parts) + 1):
                    base = REPO / "src" / Path(*parts[:depth])
                    todo += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
            elif not (REPO / "src" / step / f"{parts[0]}.py").is_file():
                modules.add(parts[0])
    found = installed_modules()
    return {canonicalize_name(d) for m in modules for d in found.get(m, [])}


def with_requirements(names: set[str]) -> set[str]:
    """`names` and every distribution they require, as installed here."""
    todo, found = list(names), set()
    while todo:
        if (name := todo.pop()) in found:
            continue
        found.add(name)
        try:
            requirements = [Requirement(r) for r in requires(name) or []]
        except PackageNotFoundError:
            continue
        todo += [
            canonicalize_name(r.name)
            for r in requirements
            if not r.marker or r.marker.evaluate({"extra": ""})
        ]
    return found


@pytest.mark.parametrize("step", STEPS)
def test_a_step_environment_pins_what_the_step_imports(step):
    """A step's conda.yml pins, as pyproject.toml does, the packages its code imports and those
    they require: no more (download_dataset's and preprocess's environments hold no torch), no less
    (the step would not import in it)."""
    listed = pins(pip_section(REPO / "src" / step / "conda.yml"))
    assert listed.items() <= PROJECT.items(), "a pin that pyproject.toml does not have"
    needed = (with_requirements(imported_distributions(step)) & set(PROJECT)) | NOT_IMPORTED.get(step, set())
    assert sorted(listed) == sorted(needed), f"src/{step}/conda.yml should list the pins of {sorted(needed)}"
    assert not any(line.startswith("-e") for line in pip_section(REPO / "src" / step / "conda.yml")), (
        "the library comes from the checkout (sheldon/engine/environments.py), not from a path in the file"
    )


def test_steps_that_train_nothing_need_no_torch():
    for step in ("download_dataset", "preprocess"):
        assert "torch" not in pins(pip_section(REPO / "src" / step / "conda.yml"))


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


def without_package_settings(**extra: str) -> dict[str, str]:
    """This environment less pip's and uv's settings (this machine's pip has some), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    return env | {"PATH": f"{BIN}{os.pathsep}{env['PATH']}"} | extra  # uv, as the engine finds it


def test_uv_gets_the_sources_pip_is_configured_with(tmp_path):
    """`python -m sheldon.engine.environments uv` (what `make run` evaluates, and what the engine sets for
    each step's build): pip's config file and PIP_* variables as uv's, the variable taking
    precedence as in pip; never a Python download."""
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\nfind-links = /srv/wheels\n    /srv/more-wheels\nindex-url = https://mirror.example/simple\n"
        "extra-index-url = file:///srv/a file:///srv/b\n[install]\nconstraint = /srv/c.txt\n"
    )
    env = without_package_settings(PIP_CONFIG_FILE=str(config), PIP_INDEX_URL="https://other.example/simple")
    printed = subprocess.run(
        [sys.executable, "-m", "sheldon.engine.environments", "uv"], env=env, capture_output=True, text=True
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines() == [
        "export UV_PYTHON_DOWNLOADS=never",
        "export UV_INDEX_STRATEGY=unsafe-best-match",
        "export UV_FIND_LINKS=/srv/wheels,/srv/more-wheels",
        "export UV_INDEX_URL=https://other.example/simple",
        "export UV_EXTRA_INDEX_URL='file:///srv/a file:///srv/b'",
        "export UV_CONSTRAINT=/srv/c.txt",
    ]
    env["UV_FIND_LINKS"] = "/mine"  # set by hand: left as it is
    printed = subprocess.run(
        [sys.executable, "-m", "sheldon.engine.environments"], env=env, capture_output=True, text=True
    )
    assert "UV_FIND_LINKS" not in printed.stdout


def test_an_unknown_env_manager_is_refused_in_one_line():
    refused = subprocess.run(
        ["make", "-s", "run", "ENV_MANAGER=pip"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert "error: env manager 'pip': use one of local, virtualenv, uv, conda\n" in refused.stderr
    assert "Traceback" not in refused.stderr


def probe_wheel(folder: Path) -> Path:
    """A minimal wheel of a package no index has: found only where the sources say."""
    import zipfile

    folder.mkdir()
    wheel = folder / "sheldon_uv_probe-1.0-py3-none-any.whl"
    info = "sheldon_uv_probe-1.0.dist-info"
    files = {
        "sheldon_uv_probe.py": "ANSWER = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: sheldon-uv-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))
    return wheel


BUILD = """
import sys
from pathlib import Path
from mlflow.utils.environment import _PythonEnv
from mlflow.utils.virtualenv import _create_virtualenv
from sheldon.engine.environments import building
step, env_dir = Path(sys.argv[1]), Path(sys.argv[2])
with building("uv"):  # what sheldon/engine/launchers/local.py wraps MLflow's build in
    _create_virtualenv(step, _PythonEnv.from_conda_yaml(step / "conda.yml"), env_dir, env_manager="uv")
"""


def test_the_uv_build_mlflow_runs_gets_our_sources(tmp_path, monkeypatch):
    """MLflow's own uv build (the one its local backend runs for a step), here of a package that
    only a folder of pip's find-links holds: uv finds it through the sources sheldon passes on,
    with this machine's Python; the environment is recognised as uv's (main.env_manager=auto)."""
    step = tmp_path / "step"
    step.mkdir()
    (step / "conda.yml").write_text(
        "dependencies:\n  - python=3.11\n  - pip:\n      - sheldon-uv-probe==1.0\n"
    )
    wheels = probe_wheel(tmp_path / "wheels").parent
    env = without_package_settings(
        PIP_CONFIG_FILE=os.devnull,
        PIP_FIND_LINKS=str(wheels),
        PIP_NO_INDEX="1",
        UV_CACHE_DIR=str(tmp_path / "cache"),
    )
    env_dir = tmp_path / "envs" / "mlflow-0123abcd"
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(step), str(env_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    probe = subprocess.run(
        [env_dir / "bin" / "python", "-c", "import sheldon_uv_probe; print(sheldon_uv_probe.ANSWER)"],
        capture_output=True,
        text=True,
    )
    assert probe.stdout == "42\n"
    assert "version_info = 3.11" in (env_dir / "pyvenv.cfg").read_text()
    assert built_by(env_dir) == "uv"
    monkeypatch.setattr(sys, "prefix", str(env_dir))
    assert resolve_env_manager("auto") == "uv"

    del env["PIP_FIND_LINKS"]  # without pip's find-links, uv cannot find it
    failed = subprocess.run(
        [sys.executable, "-c", BUILD, str(step), str(tmp_path / "envs" / "mlflow-4567")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode != 0 and "sheldon-uv-probe" in failed.stderr
    assert not (tmp_path / "envs" / "mlflow-4567").exists(), "a failed build leaves no environment behind"


def test_make_help_lists_every_target_with_what_it_does():
    phony = re.search(r"^\.PHONY: (.*)$", (REPO / "Makefile").read_text(), re.M)[1].split()
    listed = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True)
    lines = listed.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(phony)
    assert all(len(line.split()) > 2 for line in lines), listed.stdout  # a few words each
