"""A copy of this checkout as a fresh clone has it: what end-to-end tests and benchmarks run in.
(Plain Python, no pytest: benchmarks/ imports it too.)"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What a fresh clone lacks: machine-local environments, tracking stores, run outputs, data
# (DVC's) and DVC's own cache and local config (.dvc/.gitignore).
MACHINE_LOCAL = (
    ".git",
    ".venv",
    "mlflow.db",
    "mlruns",
    "mlartifacts",
    "wandb",
    "outputs",
    "checkpoints",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "raw",
    "cache",
    "tmp",
    "config.local",
)


def copy_repo(target: Path, source: Path = REPO) -> Path:
    """Copy a checkout (this one by default) to `target` as a fresh clone would have it."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*MACHINE_LOCAL))
    return target
