"""The step cache on the real stack: what re-runs after each kind of change, forced re-runs,
resume after a failure, concurrent pipelines, and the lineage manifest."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers.dvc import DATA_STEPS, add_data_version, project_with_dvc_remote
from helpers.project import SHRUNK, STEPS, pipeline, ran, summary_status


def start_pipeline(project, overrides: list[str], **popen) -> subprocess.Popen:
    """`python main.py` in the background, in its own session (so a test can kill its tree)."""
    return subprocess.Popen(
        ["python", "main.py", *overrides], cwd=project.root, env=project.env, start_new_session=True, **popen
    )


def test_unchanged_rerun_launches_nothing(project, full_run):
    pipeline(project)  # whatever ran before in this project, make the shrunk config cached
    result, new = pipeline(project)
    assert result.returncode == 0, result.output[-3000:]
    assert new == []
    assert summary_status(result.stdout) == dict.fromkeys(STEPS, "cached")
    assert "command: " not in result.output and "Running command" not in result.output


def test_training_parameter_change_reruns_only_training_and_evaluation(project, full_run):
    pipeline(project)
    result, new = pipeline(project, "train_model.lr=0.0015")
    assert result.returncode == 0, result.output[-3000:]
    assert ran(new) == ["train_model", "evaluate"]
    status = summary_status(result.stdout)
    assert status["download_dataset"] == status["preprocess"] == "cached"
    # lineage on the new runs: inputs, their digests, the pipeline run, the cache key
    train = new[0]
    tags = train.data.tags
    assert tags["sheldon.input.splits"].startswith("runs:/")
    assert len(tags["sheldon.input_digest.splits"]) == 64
    assert tags["sheldon.pipeline_run_id"] == tags["mlflow.parentRunId"]
    assert len(tags["sheldon.cache_key"]) == 64


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_failed_pipeline_resumes_at_the_failed_step(project, full_run):
    pipeline(project)
    failed, new = pipeline(project, "evaluate.min_accuracy=1")
    assert failed.returncode != 0
    assert ran(new) == ["evaluate"] and new[0].info.status == "FAILED"
    # a quality gate is a setting to change, not a crash to resume: the hint restates what to fix
    assert "error: step evaluate failed: test accuracy" in failed.stderr
    assert "is below evaluate.min_accuracy=1" in failed.stderr and "Fix what it says" in failed.stderr
    resumed, new = pipeline(project, "evaluate.min_accuracy=0.6")  # the fix
    assert resumed.returncode == 0
    assert ran(new) == ["evaluate"]


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_lineage_manifest_and_summary_are_logged(project, full_run):
    result, _ = pipeline(project, "train_model.seed=5")
    assert result.returncode == 0, result.output[-3000:]
    client = project.client()
    pipeline_run = client.search_runs(
        [client.get_experiment_by_name("sheldon").experiment_id],
        filter_string="attributes.run_name = 'pipeline'",
        order_by=["attributes.start_time DESC"],
    )[0]
    (project.home / "manifest").mkdir(exist_ok=True)
    client.download_artifacts(pipeline_run.info.run_id, "", str(project.home / "manifest"))
    manifest = json.loads((project.home / "manifest" / "lineage.json").read_text())
    rows = {row["step"]: row for row in manifest["steps"]}
    assert [row["step"] for row in manifest["steps"]] == STEPS
    assert rows["preprocess"]["status"] == "cached" and rows["train_model"]["status"] == "ran"
    assert rows["train_model"]["inputs"]["splits"] == f"runs:/{rows['preprocess']['run_id']}/splits"
    assert rows["train_model"]["input_digests"]["splits"] == rows["preprocess"]["outputs"]["splits"]
    assert rows["train_model"]["seconds"] > 0
    summary = (project.home / "manifest" / "summary.txt").read_text()
    assert "cached" in summary and "ran" in summary


@pytest.mark.slow
def test_each_kind_of_change_reruns_what_depends_on_it(project, full_run):
    pipeline(project)
    result, new = pipeline(project, "preprocess.seed=3")
    assert ran(new) == ["preprocess", "train_model", "evaluate"]
    step_file = project.root / "src" / "train_model" / "run.py"
    original = step_file.read_text()
    try:
        step_file.write_text(original + "\n# an edit\n")
        result, new = pipeline(project)
        assert ran(new) == ["train_model", "evaluate"], result.output[-2000:]
    finally:
        step_file.write_text(original)
    engine_file = project.root / "src" / "sheldon" / "engine" / "runner.py"
    original = engine_file.read_text()
    try:  # no step imports the engine: its code is in no step's key
        engine_file.write_text(original + "\n# an edit\n")
        result, new = pipeline(project)
        assert new == [], result.output[-2000:]
        assert summary_status(result.stdout) == dict.fromkeys(STEPS, "cached")
    finally:
        engine_file.write_text(original)
    result, new = pipeline(project, "main.force=preprocess")
    assert ran(new) == ["preprocess", "train_model", "evaluate"]
    result, new = pipeline(project, "main.use_cache=false")
    assert ran(new) == STEPS


@pytest.mark.slow
def test_two_concurrent_pipelines_both_finish(project, full_run):
    pipeline(project)
    overrides = [*SHRUNK.split(), "train_model.seed=123"]
    procs = [
        start_pipeline(project, overrides, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
        assert "database is locked" not in output
    for evaluate in project.step_runs("evaluate")[-2:]:
        train_id = evaluate.data.params["model"].split("/")[1]
        assert project.client().get_run(train_id).info.status == "FINISHED"


@pytest.mark.slow
def test_new_data_version_reruns_everything_downstream(tmp_path):
    fresh, new = project_with_dvc_remote(tmp_path)
    assert ran(new) == ["download_dataset", "preprocess"]
    _, new = pipeline(fresh, DATA_STEPS)
    assert new == []
    new = add_data_version(fresh, tmp_path)
    assert new[0].data.tags.get("sheldon.not_cacheable")  # a fresh download is never reused
    result, new = pipeline(fresh, DATA_STEPS)
    assert result.returncode == 0, result.output[-3000:]
    assert ran(new) == ["download_dataset", "preprocess"]
    assert new[1].data.metrics["n_train"] == 1750
