"""The one place that knows where things live: every path is rooted at the repository."""

from __future__ import annotations

import os
from pathlib import Path


def find_repo_root() -> Path:
    """SHELDON_ROOT if set; else the nearest folder up from here holding the root MLproject and
    config.yaml (a step runs in src/<step>, so a copy of the repo finds itself); else the
    checkout this package was installed from (editable, see Makefile)."""
    if os.environ.get("SHELDON_ROOT"):
        return Path(os.environ["SHELDON_ROOT"]).resolve()
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "MLproject").is_file() and (folder / "config.yaml").is_file():
            return folder
    return Path(__file__).resolve().parents[3]


REPO_ROOT = find_repo_root()


def step_dir(step: str) -> Path:
    """src/<step>: a step's folder (its MLproject, its script, its environment)."""
    return REPO_ROOT / "src" / step


def repo_path(path: str | os.PathLike) -> Path:
    """Resolve `path` against the repository root unless it is already absolute."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def default_tracking_uri() -> str:
    """MLflow's embedded sqlite store at the repository root, as an absolute URI."""
    return f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def absolute_tracking_uri(uri: str | None) -> str:
    """The tracking URI every process should use: relative sqlite/file paths are made absolute
    against the current directory, so steps running in their own folders share one store."""
    if not uri:
        return default_tracking_uri()
    for scheme in ("sqlite:///", "file:"):
        if uri.startswith(scheme):
            rest = uri[len(scheme) :]
            if scheme == "file:":
                rest = rest.removeprefix("//")
            if not Path(rest).is_absolute():
                absolute = Path.cwd() / rest
                return f"sqlite:///{absolute}" if scheme == "sqlite:///" else absolute.as_uri()
    if "://" not in uri and not uri.startswith(("databricks", "uc")):
        return Path(uri).resolve().as_uri()  # a bare folder means a file store
    return uri
