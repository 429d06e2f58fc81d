"""train_model through the real pipeline: data-parallel on two CPU processes, and on Debian's
Fashion-MNIST (70,000 images)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.project import make_project
from helpers.training import accuracy, settings

from sheldon.data.datasets import FASHION_MNIST_DIR, load_split, raw_images
from sheldon.serving.predict import accuracy as served_accuracy
from sheldon.serving.predict import load_model
from sheldon.step.artifacts import fetch_artifact
from sheldon.training import train


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR} is absent); "
    "apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_runs_through_the_whole_pipeline(tmp_path):
    project = make_project(tmp_path)
    result = project.mlflow_run(hydra_options="+dataset=fashion_mnist")  # one override
    assert result.returncode == 0, result.output[-4000:]
    runs = {r.data.tags["sheldon.step"]: r for r in project.step_runs()}
    assert runs["preprocess"].data.metrics["n_train"] == 49_000
    assert runs["evaluate"].data.metrics["test_accuracy"] >= 0.85
    for step in ("train_model", "evaluate"):
        assert runs[step].data.metrics["peak_memory_mb"] < 2048
    assert Path(project.root / "data" / "raw").is_dir()


@pytest.mark.slow  # two training processes: ~80 s; CI runs it with `make test-slow`
def test_ddp_on_two_cpu_processes_through_the_real_step_matches_one_process(tmp_path):
    project = make_project(tmp_path)
    result = project.mlflow_run(
        "steps=download_dataset,preprocess,train_model",
        hydra_options="train_model.epochs=2 train_model.nproc_per_node=2",
    )
    assert result.returncode == 0, result.output[-4000:]

    [ddp_run] = project.step_runs("train_model")
    assert ddp_run.data.params["nproc_per_node"] == "2"
    history = project.client().get_metric_history(ddp_run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]  # rank 0 alone logs: one value per epoch
    assert len(project.wandb_runs()) == 3  # one W&B run per step: rank 1 opened none

    # The same configuration in one process, on the same splits, reaches the same test accuracy.
    os.environ["MLFLOW_TRACKING_URI"] = project.tracking_uri
    try:
        folder = fetch_artifact(ddp_run.data.params["splits"])
        ddp_model = load_model(f"runs:/{ddp_run.info.run_id}/classifier")  # as it is served
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    single, _ = train(
        load_split(folder, "train"), load_split(folder, "val"), settings("train_model.epochs=2")
    )
    test = load_split(folder, "test")
    ddp_accuracy = served_accuracy(ddp_model, raw_images(test[0]), test[1])
    assert abs(ddp_accuracy - accuracy(single, test)) <= 0.02
