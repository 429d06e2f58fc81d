"""What a person sees first in the MLflow UI that `make ui` opens, looked at by a real headless
browser (Debian's chromium: `make chromium`) on a store after a pipeline, a 2-trial sweep and an
all-cached re-run: the runs table of the pipeline runs, each named for what sets it apart, with
their headline metrics as columns."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.http_server import free_port
from helpers.project import SHRUNK, make_project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="no chromium to look at the UI with: `make chromium` installs it",
    ),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A repo copy whose store holds a pipeline, a sweep of 2 trials, then the pipeline again."""
    project = make_project(tmp_path_factory.mktemp("ui"))
    for sweep in ([], ["-m", "train_model.lr=0.001,0.003"], []):
        result = project.run("python", "main.py", *sweep, *SHRUNK.split())
        assert result.returncode == 0, result.output[-4000:]
    return project


def first_screen(url: str, screenshot: Path) -> str:
    """The page at `url` as headless chromium renders it once the UI has loaded its runs: its
    DOM, and a screenshot."""
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",  # as root, as CI runs it
        "--disable-gpu",
        "--window-size=1600,900",
        "--virtual-time-budget=30000",  # ms of the page's time: the UI's requests and rendering
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def test_make_ui_opens_on_the_pipeline_runs_with_their_headline_metrics(recorded, tmp_path):
    project = recorded
    port = free_port()
    ui = subprocess.Popen(
        ["python", "-m", "sheldon.serving.serve", "ui", "--port", str(port)],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        said = ui.stdout.readline()
        url = re.fullmatch(r"MLflow UI: (\S+)\n", said)[1]
        assert (
            url.startswith(f"http://127.0.0.1:{port}/#/experiments/")
            and "workflowType=machine_learning" in url
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "the UI did not start"
                time.sleep(0.5)
        page = first_screen(url, tmp_path / "first_screen.png")
    finally:
        ui.terminate()
        ui.wait(timeout=30)

    names = sorted(r.info.run_name for r in project.runs() if r.info.run_name.startswith("pipeline"))
    # the second trial is the first pipeline's configuration (lr=0.003 is config.yaml's): all cached
    assert names == [
        "pipeline",
        "pipeline (all cached)",
        "pipeline lr=0.001",
        "pipeline lr=0.003 (all cached)",
    ]
    text = re.sub(r"<[^>]+>", "\n", page)
    table = text[text.index("Run Name") : text.index("matching runs")]  # not the description above it
    shown = {line.strip() for line in table.splitlines()}
    assert {
        "pipeline",
        "pipeline lr=0.001",
        "pipeline lr=0.003 (all cached)",
    } <= shown  # the trials told apart
    assert "pipeline (all cached)" not in shown  # a re-run that trained nothing, left out
    assert {"train_model.lr", "evaluate.test_accuracy", "train_model.best_val_accuracy"} <= shown  # columns
    (trained,) = [r for r in project.runs() if r.info.run_name == "pipeline"]
    assert str(trained.data.metrics["evaluate.test_accuracy"]) in shown
    assert "No data available" not in page  # not the GenAI overview of traces


def test_each_steps_data_input_is_a_dataset_of_its_run_and_of_the_model_trained_on_it(recorded):
    project = recorded
    (preprocess,) = project.step_runs("preprocess")
    splits_digest = preprocess.data.tags["sheldon.digest.splits"]
    for run in project.step_runs("train_model") + project.step_runs("evaluate"):
        (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]  # the Dataset column
        assert (dataset.name, dataset.source_type) == ("splits", "mlflow_artifact")
        assert (
            splits_digest.startswith(dataset.digest) and f"runs:/{preprocess.info.run_id}/" in dataset.source
        )
    experiment = preprocess.info.experiment_id
    for model in project.client().search_logged_models([experiment]):  # its "Datasets used"
        assert {(m.dataset_name, m.dataset_digest) for m in model.metrics} == {("splits", splits_digest[:36])}
