"""The real `mlflow run .` in a temporary copy of the repo, as a user runs it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil
import pytest
from helpers.project import BIN, SHRUNK, STEPS, make_project, said


def latest(project, step):
    return project.step_runs(step)[-1]


def full_run_steps(project, full_run):
    """The step runs of the session's full pipeline run (other tests add runs of their own)."""
    pipeline_id = re.search(r"pipeline run ([0-9a-f]{32})", full_run.stdout)[1]
    return [r for r in project.step_runs() if r.data.tags.get("mlflow.parentRunId") == pipeline_id]


def test_full_pipeline_runs_four_nested_steps(project, full_run):
    runs = full_run_steps(project, full_run)
    assert [r.data.tags["sheldon.step"] for r in runs] == STEPS
    assert all(r.info.status == "FINISHED" for r in runs)
    assert [r.info.run_name for r in runs] == STEPS
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    pipeline = project.client().get_run(parents.pop())
    assert pipeline.info.run_name == "pipeline"
    assert pipeline.info.status == "FINISHED"
    experiment = project.client().get_experiment(pipeline.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_full_pipeline_logs_artifacts_and_metrics(project, full_run, config):
    client = project.client()
    by_step = {r.data.tags["sheldon.step"]: r for r in full_run_steps(project, full_run)}
    artifacts = {
        step: {a.path for a in client.list_artifacts(run.info.run_id)} for step, run in by_step.items()
    }
    assert "raw_data" in artifacts["download_dataset"]
    assert {"splits/train.npz", "splits/val.npz", "splits/test.npz", "splits/class_counts.json"} <= {
        a.path for a in client.list_artifacts(by_step["preprocess"].info.run_id, "splits")
    }
    assert "confusion_matrix.png" in artifacts["evaluate"]
    assert by_step["preprocess"].data.metrics["n_train"] == 3500
    assert len(client.get_metric_history(by_step["train_model"].info.run_id, "val_accuracy")) == 1
    metrics = by_step["evaluate"].data.metrics
    assert 0.5 < metrics["test_accuracy"] <= 1 and "test_macro_f1" in metrics
    assert not any(name.startswith(("precision_", "recall_", "f1_")) for name in metrics)  # a table instead
    assert "per_class.json" in artifacts["evaluate"]
    assert by_step["train_model"].data.params["lr"] == str(config.train_model.lr)


def test_the_pipeline_run_carries_its_steps_parameters_and_headline_metrics(project, full_run, config):
    """What the runs table sorts and filters pipelines by: `<section>.<parameter>` params and
    `<step>.<headline metric>` metrics, the same values as on the step runs."""
    by_step = {r.data.tags["sheldon.step"]: r for r in full_run_steps(project, full_run)}
    pipeline = project.client().get_run(by_step["evaluate"].data.tags["mlflow.parentRunId"])
    params, metrics = pipeline.data.params, pipeline.data.metrics
    assert params["train_model.lr"] == by_step["train_model"].data.params["lr"] == str(config.train_model.lr)
    assert params["data.source"] == str(config.data.source) and params["evaluate.batch_size"] == "512"
    assert metrics["evaluate.test_accuracy"] == by_step["evaluate"].data.metrics["test_accuracy"]
    best = by_step["train_model"].data.metrics["best_val_accuracy"]
    assert metrics["train_model.best_val_accuracy"] == best
    assert metrics["preprocess.n_train"] == 3500


def test_full_pipeline_prints_summary_and_writes_wandb_offline(project, full_run):
    for step in STEPS:
        assert step in full_run.stdout
    assert "test_accuracy=" in full_run.stdout and "mlflow run id" in full_run.stdout
    assert len(project.wandb_runs()) >= 4
    assert (project.root / "data" / "raw" / "mnist_5k.npz").exists()


# A step's line: `train_model  ran  15.0 s  best_val_accuracy=0.97  (run d03...)  why: ..`
STEP_LINE = re.compile(r"(\w+) +(ran|cached) +(?:\d+\.\d s)? +\S+=\S+  \(run [0-9a-f]{8}\)(?:  why: .+)?")


def test_a_pipeline_says_a_line_per_step_then_its_summary(full_run):
    """What `mlflow run .` shows by default: no step's command or output, no progress bar (not a
    terminal), nothing on stderr but the INFO lines of `mlflow run` itself (`make run` quiets
    those too, below)."""
    lines = full_run.stdout.splitlines()
    assert lines[0].startswith("pipeline: download_dataset -> preprocess -> train_model -> evaluate (")
    assert [STEP_LINE.fullmatch(line).groups() for line in lines[1:5]] == [(s, "ran") for s in STEPS]
    assert lines[5] == "" and lines[6].split()[:2] == ["step", "status"]  # the summary
    assert "command:" not in full_run.output and "===" not in full_run.stdout
    assert said(full_run.stderr) == []
    assert "sheldon-inputs" not in full_run.stderr  # MLflow's INFO lines of each step's launch
    assert max(map(len, full_run.stdout.splitlines())) < 200


def test_mlflow_run_as_make_runs_it_says_nothing_else(project, full_run):
    """`make run`'s MLFLOW_LOGGING_LEVEL=WARNING quiets `mlflow run`'s own INFO lines: a run says its
    steps and summary, and nothing at all on stderr."""
    project.env["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    try:
        result = project.mlflow_run(
            "steps=preprocess,train_model", hydra_options=f"{SHRUNK} main.force=preprocess"
        )
    finally:
        del project.env["MLFLOW_LOGGING_LEVEL"]
    assert (result.returncode, result.stderr) == (0, ""), result.output[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pipeline: preprocess -> train_model (")
    assert [STEP_LINE.fullmatch(line).groups() for line in lines[1:3]] == [
        ("preprocess", "ran"),
        ("train_model", "ran"),
    ]
    assert lines[3] == "" and lines[-1].startswith("pipeline run ")
    assert len(lines) == 3 + 1 + 5 + 2  # the summary: header, dashes, download_dataset (cached), the two


def test_verbose_shows_each_steps_command_inputs_and_own_output(project, full_run):
    """main.verbose=true: each step's command (the step forked from the template: the first
    prepared on demand, the next ahead), its inputs, its own lines (a line per epoch, not a
    terminal's progress bar) and MLflow's INFO lines."""
    result = project.run(
        "python", "main.py", "main.steps=preprocess,train_model", *SHRUNK.split(), "main.force=preprocess",
        "main.verbose=true",
    )  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    sections = result.stdout.split("\n=== ")
    forked = [s.split()[0] for s in sections[1:] if "\n  command: python run.py " in s]
    assert forked == ["preprocess", "train_model"]
    assert "\n  raw_data <- download_dataset run " in result.stdout and "\nsplit sizes: " in result.stdout
    assert re.search(r"^epoch 1/1: loss=\S+, samples_s=\d+, val_acc=\S+$", result.stdout, re.M)
    assert " INFO mlflow.projects.utils: === Created directory " in result.stderr
    assert "%|" not in result.output  # no progress bar


def prestarted_left(root: Path) -> list[str]:
    """Interpreters started ahead for steps of the repo copy at `root` that still run."""
    left = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = process.info["cmdline"] or [], process.info["cwd"] or ""
        if (
            "sheldon.engine.launchers.template" in cmdline
            and cwd.startswith(str(root))
            and process.status() != "zombie"
        ):
            left.append(f"{process.pid} {cwd}")
    return left


def test_subset_takes_inputs_from_earlier_runs(project, full_run):
    preprocess = full_run_steps(project, full_run)[1]
    before = len(project.step_runs())
    result = project.mlflow_run("steps=train_model,evaluate", hydra_options=f"{SHRUNK} train_model.lr=0.002")
    assert result.returncode == 0, result.output[-3000:]
    new = project.step_runs()[before:]
    assert [r.data.tags["sheldon.step"] for r in new] == ["train_model", "evaluate"]
    train = new[0]
    # preprocess's run for this configuration: the full run's, or one with its key that a later
    # test ran again (main.force)
    used = project.client().get_run(train.data.params["splits"].split("/")[1])
    assert used.data.tags["sheldon.step"] == "preprocess" and used.info.status == "FINISHED"
    assert used.data.tags["sheldon.cache_key"] == preprocess.data.tags["sheldon.cache_key"]
    assert train.data.params["lr"] == "0.002"
    assert new[1].data.params["model"] == f"runs:/{train.info.run_id}/classifier"


def test_unknown_step_lists_valid_ones_and_runs_nothing(project, full_run):
    before = len(project.step_runs())
    result = project.mlflow_run("steps=preprocess,trian_model")
    assert result.returncode != 0
    assert "unknown step 'trian_model'" in result.stderr
    assert "download_dataset, preprocess, train_model, evaluate" in result.stderr
    assert len(project.step_runs()) == before


@pytest.mark.parametrize(
    "override, complaint",
    [
        ("train_model.no_such_key=1", "no_such_key"),
        ("train_model.lr=[1,", "train_model.lr"),
        (
            "main.steps=download_dataset,,train_model",
            "main.steps='download_dataset,,train_model' has an empty item",
        ),
        ("evaluate.min_accuracy=1.5", "evaluate.min_accuracy: expected a number from 0 to 1, got '1.5'"),
    ],
    ids=["unknown-key", "malformed", "empty-step", "accuracy-above-1"],
)
def test_bad_override_stops_before_any_step(project, full_run, override, complaint):
    before = len(project.step_runs())
    result = project.run("python", "main.py", override)
    assert result.returncode != 0
    assert complaint in result.stderr
    assert len(said(result.stderr)) == 1, result.stderr
    assert len(project.step_runs()) == before


def test_config_that_does_not_parse_is_one_line_with_line_and_column(tmp_path):
    fresh = make_project(tmp_path)
    config = fresh.root / "config.yaml"
    config.write_text(config.read_text().replace("  lr: 0.003", "  lr: [0.003"))
    result = fresh.run("python", "main.py")
    assert result.returncode == 1
    assert result.stderr.startswith("error: config.yaml, line ")
    assert ", column " in result.stderr and len(said(result.stderr)) == 1, result.stderr


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_failing_step_stops_pipeline_and_keeps_earlier_outputs(project, full_run):
    earlier = {r.info.run_id for r in project.step_runs()}
    finished = {r.info.run_id for r in project.step_runs() if r.info.status == "FINISHED"}
    raw = (project.root / "data" / "raw" / "mnist_5k.npz").read_bytes()
    gate = "train_model.epochs=1 evaluate.min_accuracy=1"  # the shrunk run's model, a gate it cannot pass
    result = project.mlflow_run("steps=evaluate", hydra_options=gate)
    assert result.returncode != 0
    assert "is below evaluate.min_accuracy=1" in result.stderr
    failed = latest(project, "evaluate")
    assert failed.info.status == "FAILED" and failed.info.run_id not in earlier
    assert "test_accuracy" in failed.data.metrics  # what it measured is kept
    assert "step evaluate failed" in result.stderr
    assert all(project.client().get_run(r).info.status == "FINISHED" for r in finished)  # outputs kept
    assert (project.root / "data" / "raw" / "mnist_5k.npz").read_bytes() == raw


def test_failure_in_the_middle_skips_later_steps(project, full_run):
    before = len(project.step_runs())
    result = project.run("python", "main.py", "main.steps=train_model,evaluate", "train_model.device=tpu")
    assert result.returncode != 0
    assert "device='tpu': use one of auto, cuda, mps, cpu" in result.stderr
    new = project.step_runs()[before:]
    assert [(r.data.tags["sheldon.step"], r.info.status) for r in new] == [("train_model", "FAILED")]
    assert prestarted_left(project.root) == []  # evaluate's, started while train_model worked


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        (["train_model.lr=-1"], "error: train_model.lr must be positive, got -1.0"),
        (
            ["preprocess.val_size=0.6", "preprocess.test_size=0.5"],
            "error: preprocess.val_size and preprocess.test_size must be fractions in (0, 1) summing "
            "below 1, got 0.6 and 0.5",
        ),
        (["train_model.lr=abc"], "error: train_model.lr: could not convert string to float: 'abc'"),
        (
            ["main.steps=test_model", "test_model.model_name=nosuch"],
            "error: no registered model 'nosuch': run the pipeline; evaluate registers each model it scores",
        ),
    ],
    ids=["lr-negative", "sizes-sum", "lr-not-a-number", "no-registered-model"],
)
@pytest.mark.parametrize("command", [["python", "main.py"], ["mlflow", "run", ".", "--env-manager", "local"]])
def test_a_setting_a_later_step_refuses_is_refused_before_anything_launches(
    project, command, overrides, refusal
):
    """Each selected step's settings, their rules and what they need of the store are checked in
    the pipeline's process first: one line, no step started, no run left (mlflow run's own run
    included), where the step used to refuse it after the steps before it had run."""
    before = [(r.info.run_id, r.info.status) for r in project.runs()]
    if command[0] == "mlflow":
        result = project.run(*command, "-P", f"hydra_options={' '.join(overrides)}")
    else:
        result = project.run(*command, *overrides)
    assert result.returncode == 1, result.output[-3000:]
    lines = result.stderr.strip().splitlines()
    assert refusal in lines and (command[0] == "mlflow" or lines[-1] == refusal)  # MLflow's own line ends
    assert "===" not in result.stdout and "Traceback" not in result.stderr  # no step began
    assert [(r.info.run_id, r.info.status) for r in project.runs()] == before


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_steps_leave_nothing_in_the_temporary_folder(project, full_run, tmp_path):
    """Each step downloads its inputs (the splits, the model: MBs a run) to the temporary folder:
    the pipeline removes them when the step ends, and what MLflow makes there for a launch."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = project.env
    project.env = env | {"TMPDIR": str(tmp)}
    try:
        result = project.run("python", "main.py", *SHRUNK.split(), "main.force=train_model")
    finally:
        project.env = env
    assert result.returncode == 0, result.output[-3000:]
    assert "train_model       ran" in result.stdout and "evaluate          ran" in result.stdout
    # Left: the lock files of the step cache's keys, the (shared) folder of steps' inputs, empty,
    # and torch's compile cache folder (empty here), made once for every later run.
    kept = (tmp / "sheldon-locks", *tmp.glob("torchinductor_*"))
    left = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if not any(p.is_relative_to(k) for k in kept)]
    assert left == ["sheldon-inputs"], left


def test_step_runs_alone_with_artifact_uris(project, full_run):
    raw = [r for r in project.step_runs("download_dataset") if r.info.status == "FINISHED"][-1]
    result = project.mlflow_step(
        "preprocess",
        "--experiment-name",
        "sheldon",
        "-P",
        f"raw_data=runs:/{raw.info.run_id}/raw_data",
        "-P",
        "seed=7",
    )
    assert result.returncode == 0, result.output[-3000:]
    run = latest(project, "preprocess")
    assert run.info.status == "FINISHED" and run.data.params["seed"] == "7"


def test_missing_upstream_says_which_step_to_run_first(tmp_path):
    fresh = make_project(tmp_path)
    result = fresh.run("python", "main.py", "main.steps=evaluate")
    assert result.returncode != 0
    assert "no finished download_dataset run matches this configuration" in result.stderr
    assert "-P steps=download_dataset,preprocess,train_model,evaluate" in result.stderr
    assert len(said(result.stderr)) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fresh.step_runs() == []


def test_main_runs_with_the_venv_python_alone_on_the_command_line(tmp_path):
    """`.venv/bin/python main.py` without an activated venv: steps still launch through its mlflow."""
    fresh = make_project(tmp_path)
    fresh.env["PATH"] = os.pathsep.join(p for p in fresh.env["PATH"].split(os.pathsep) if Path(p) != BIN)
    result = fresh.run(str(BIN / "python"), "main.py", "main.steps=download_dataset")
    assert result.returncode == 0, result.output[-3000:]
    assert [r.info.status for r in fresh.step_runs("download_dataset")] == ["FINISHED"]
