"""Each format of dataset a team may bring, through main.py: download_dataset, preprocess and
one epoch of training in a temporary copy of the repo."""

from __future__ import annotations

import subprocess

import pytest
from helpers.datasets import CLASSES, WRITERS, sample
from helpers.project import SHRUNK, make_project


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["images", "csv"])
def test_each_format_through_preprocess_and_one_epoch_of_training(tmp_path, fmt):
    project = make_project(tmp_path)
    project.env["HOME"] = str(tmp_path / "home")
    subprocess.run(["git", "init", "-q"], cwd=project.root, check=True)
    source = WRITERS[fmt](tmp_path / "team-data", sample(90))
    result = project.run(
        "python",
        "main.py",
        "main.steps=download_dataset,preprocess,train_model",
        "data.download_new=true",
        f"data.source={source}",
        f"preprocess.num_classes={CLASSES}",
        *SHRUNK.split(),
    )
    assert result.returncode == 0, result.output[-3000:]
    runs = {r.data.tags["sheldon.step"]: r for r in project.step_runs()}
    assert runs["preprocess"].data.metrics["n_train"] == 62
    assert runs["train_model"].info.status == "FINISHED"
