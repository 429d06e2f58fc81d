"""Inputs come from the configuration, not from whatever ran last; runs pinned by hand say so;
failure hints say what fixes the failure; launches leave nothing in the Default experiment."""

from __future__ import annotations

import re
import shutil
import time

import pytest
from helpers.project import SHRUNK, said


def pipeline_steps(project, output: str) -> dict[str, object]:
    """The step runs of the pipeline run an output names, by step."""
    pipeline_id = re.search(r"pipeline run ([0-9a-f]{32})", output)[1]
    return {
        r.data.tags["sheldon.step"]: r
        for r in project.step_runs()
        if r.data.tags.get("mlflow.parentRunId") == pipeline_id
    }


@pytest.fixture(scope="module")
def configured(project, full_run):
    """The full run's step runs, and a preprocess run made by hand with another seed after it."""
    runs = pipeline_steps(project, full_run.stdout)
    raw_data = f"runs:/{runs['download_dataset'].info.run_id}/raw_data"
    result = project.mlflow_step(
        "preprocess", "--experiment-name", "sheldon", "-P", f"raw_data={raw_data}", "-P", "seed=7"
    )
    assert result.returncode == 0, result.output[-3000:]
    by_hand = project.step_runs("preprocess")[-1]
    assert by_hand.data.params["seed"] == "7"
    return runs, by_hand


def test_a_subset_takes_the_upstream_run_of_its_configuration_not_the_latest(project, configured):
    runs, by_hand = configured
    result = project.run("python", "main.py", "main.steps=train_model", *SHRUNK.split(), "main.verbose=true")
    assert result.returncode == 0, result.output[-3000:]
    preprocess = runs["preprocess"].info.run_id
    assert f"splits <- preprocess run {preprocess[:8]} (cached, same config)" in result.stdout
    assert by_hand.info.run_id[:8] not in result.stdout
    assert re.search(rf"^preprocess\s+cached\s+0.0\s+{preprocess}", result.stdout, re.M)


def test_an_upstream_that_this_configuration_never_produced_stops_before_anything_runs(project, configured):
    before = len(project.step_runs())
    result = project.run("python", "main.py", "main.steps=evaluate", *SHRUNK.split(), "train_model.epochs=3")
    assert result.returncode == 1
    assert len(said(result.stderr)) == 1, result.stderr
    assert (
        "evaluate needs the output of train_model, but no finished train_model run matches" in result.stderr
    )
    assert "mlflow run . --env-manager local -P steps=train_model,evaluate -P hydra_options=" in result.stderr
    assert "train_model.epochs=3'" in result.stderr  # the user's overrides are kept
    assert "main.pin=train_model:<run id>" in result.stderr
    assert len(project.step_runs()) == before


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_a_run_pinned_by_hand_is_used_and_said_to_be(project, configured):
    _, by_hand = configured
    result = project.run(
        "python",
        "main.py",
        "main.steps=train_model",
        *SHRUNK.split(),
        f"main.pin=preprocess:{by_hand.info.run_id}",
        "main.verbose=true",  # each input, and where it came from
    )
    assert result.returncode == 0, result.output[-3000:]
    assert f"splits <- preprocess run {by_hand.info.run_id[:8]} (pinned by hand)" in result.stdout
    assert re.search(rf"^preprocess\s+pinned\s+0.0\s+{by_hand.info.run_id}", result.stdout, re.M)
    train = pipeline_steps(project, result.stdout)["train_model"]
    assert train.data.params["splits"] == f"runs:/{by_hand.info.run_id}/splits"
    assert train.data.tags["sheldon.input_source.splits"].endswith("(pinned by hand)")


@pytest.mark.parametrize(
    ("pin", "complaint"),
    [
        ("preprocess:0123456789abcdef0123456789abcdef", "no such run"),
        ("preprocess:{train}", "that is a run of train_model, not of preprocess"),
        ("train_model:{train}", "main.pin names a run for train_model, which this pipeline runs"),
        ("preprocess", "expected <step>:<run id>"),
    ],
    ids=["no-such-run", "other-step", "selected-step", "malformed"],
)
def test_a_bad_pin_is_one_line_and_runs_nothing(project, configured, pin, complaint):
    runs, _ = configured
    before = len(project.step_runs())
    pin = pin.format(train=runs["train_model"].info.run_id)
    result = project.run("python", "main.py", "main.steps=train_model", *SHRUNK.split(), f"main.pin={pin}")
    assert result.returncode == 1
    assert complaint in result.stderr and len(said(result.stderr)) == 1, result.stderr
    assert len(project.step_runs()) == before


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_a_crash_is_resumed_and_a_bad_setting_is_named(project, configured):
    # a model with 5 outputs for 10 classes: the loss raises in the middle of training
    crash = "train_model.model.num_classes=5"
    crashed = project.run("python", "main.py", "main.steps=train_model", *SHRUNK.split(), crash)
    assert crashed.returncode == 1
    assert "step train_model failed; later steps did not run" in crashed.stderr
    assert f"{crash} train_model.resume=true" in crashed.stderr
    refused = project.run(
        "python", "main.py", "main.steps=train_model", *SHRUNK.split(), "train_model.device=tpu"
    )
    assert refused.returncode == 1
    assert "error: step train_model failed: device='tpu': use one of" in refused.stderr
    assert "Fix what it says" in refused.stderr and "mlflow run" not in refused.stderr.split("failed:")[1]


def test_a_cached_download_brings_data_raw_back(project, configured):
    """data/raw gone (a fresh clone): the cached run stands, and DVC brings the data back. Other
    files in data/raw: the step runs again, as only it may replace them."""
    raw = project.root / "data" / "raw"
    saved = {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    shutil.rmtree(raw)
    result = project.run("python", "main.py", "main.steps=download_dataset")
    assert result.returncode == 0, result.output[-3000:]
    assert "download_dataset: cached, but" in result.stdout
    assert "is missing: pulled the data version data.dvc pins" in result.stdout
    assert re.search(r"^download_dataset\s+cached", result.stdout, re.M), result.output[-3000:]
    assert {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == saved

    shutil.rmtree(raw)
    raw.mkdir()
    (raw / "notes.txt").write_text("not DVC's")
    try:
        other = project.run("python", "main.py", "main.steps=download_dataset")
        assert "holds other data than its run" in other.stdout and "running it again" in other.stdout
        assert other.returncode != 0, "it refuses to replace data that DVC does not keep"
        assert (raw / "notes.txt").read_text() == "not DVC's"
    finally:  # the session's project, as the tests after this one expect it
        shutil.rmtree(raw)
        for name, data in saved.items():
            (raw / name).parent.mkdir(parents=True, exist_ok=True)
            (raw / name).write_bytes(data)


def default_experiment_runs(project) -> list:
    return project.client().search_runs(["0"])


def test_mlflow_run_leaves_nothing_in_the_default_experiment(project, full_run):
    failed = project.mlflow_run("steps=bogus")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    deadline = time.time() + 30  # the launcher's run is deleted once `mlflow run` has exited
    while default_experiment_runs(project) and time.time() < deadline:
        time.sleep(0.5)
    assert default_experiment_runs(project) == []
