"""train_model on Debian's Fashion-MNIST (70,000 images), through the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.project import make_project

from sheldon.data.datasets import FASHION_MNIST_DIR


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
