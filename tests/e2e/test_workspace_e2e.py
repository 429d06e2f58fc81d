"""The git tree of a clean clone stays clean: everything the pipeline writes is ignored, so the
sheldon.git_dirty tag is true only when the user changed a tracked file."""

from __future__ import annotations

import pytest
from helpers.dvc import as_clone, git
from helpers.project import SHRUNK, Project, make_project


@pytest.mark.slow
def test_a_clean_clone_stays_clean_through_the_pipeline_and_a_modified_one_is_tagged_dirty(tmp_path):
    project = make_project(tmp_path)
    # Everything where a user's clone has it: the tracking db (and sqlite's -wal/-shm beside it)
    # at the repo root, W&B's folders beside the steps, the DVC default remote under $HOME.
    for name in ("MLFLOW_TRACKING_URI", "WANDB_DIR"):
        project.env.pop(name)
    project.env["HOME"] = str(tmp_path / "home")
    root = as_clone(project.root)
    store = Project(root, tmp_path, {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"})

    result = project.mlflow_run(hydra_options=SHRUNK)
    assert result.returncode == 0, result.output[-3000:]
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    runs = store.step_runs()
    assert [r.data.tags["sheldon.step"] for r in runs] == [
        "download_dataset",
        "preprocess",
        "train_model",
        "evaluate",
    ]
    assert {r.data.tags["sheldon.git_dirty"] for r in runs} == {"false"}

    with (root / "README.md").open("a") as readme:
        readme.write("\na local note\n")
    result = project.mlflow_run("steps=download_dataset", hydra_options="main.force=download_dataset")
    assert result.returncode == 0, result.output[-3000:]
    assert store.step_runs()[-1].data.tags["sheldon.git_dirty"] == "true"
