"""A step launched on its own with `mlflow run src/<step>`, as docs/how-to/run-the-pipeline.md shows:
its run is named after the step and lands in config.yaml's experiment (Default keeps nothing), a
missing input is one line, the output is quiet, and W&B holds the trained model under the alias
evaluate refers to."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.project import Project, default_experiment_is_empty, make_project, wandb_records


def only_run(project: Project, step: str):
    [run] = project.step_runs(step)
    return run


def wandb_run_of(project: Project, step: str) -> list:
    """The records of the latest offline W&B run of a step."""
    for run_dir in reversed(project.wandb_runs()):
        records = wandb_records(run_dir)
        if any(r.HasField("run") and r.run.job_type == step for r in records):
            return records
    raise AssertionError(f"no W&B run of {step}")


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> Project:
    project = make_project(tmp_path_factory.mktemp("one-step"))
    result = project.mlflow_step("download_dataset")
    assert result.returncode == 0, result.output[-3000:]
    return project


@pytest.fixture(scope="module")
def preprocessed(standalone):
    """The one-step example of docs/how-to/run-the-pipeline.md, as written: preprocess with another seed."""
    raw_data = f"runs:/{only_run(standalone, 'download_dataset').info.run_id}/raw_data"
    result = standalone.mlflow_step("preprocess", "-P", f"raw_data={raw_data}", "-P", "seed=7")
    assert result.returncode == 0, result.output[-3000:]
    return result


def test_a_missing_input_is_one_line_naming_it_and_how_to_get_one(standalone):
    before = len(standalone.step_runs("preprocess"))
    result = standalone.mlflow_step("preprocess")
    assert result.returncode != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: preprocess needs raw_data: -P raw_data=runs:/<download_dataset run id>/raw_data "
        "(run ids are in the MLflow UI and a pipeline's summary), or let the pipeline find it: "
        "mlflow run . --env-manager local -P steps=preprocess"
    ]
    assert len(standalone.step_runs("preprocess")) == before  # refused before any run was opened
    assert default_experiment_is_empty(standalone)


def test_the_readme_example_runs_in_the_configured_experiment_named_after_the_step(standalone, preprocessed):
    result = preprocessed
    run = only_run(standalone, "preprocess")  # standalone.step_runs() reads experiment `sheldon`
    assert run.info.run_name == "preprocess" and run.info.status == "FINISHED"
    raw_data = f"runs:/{only_run(standalone, 'download_dataset').info.run_id}/raw_data"
    assert run.data.params["seed"] == "7" and run.data.params["raw_data"] == raw_data
    assert run.data.tags["mlflow.source.type"] == "PROJECT"  # the launch run's tags came along
    assert f"preprocess: run {run.info.run_id} in experiment 'sheldon'" in result.stdout
    assert "preprocess: 100%" not in result.stderr  # not a terminal: no progress bar in its log
    assert "Downloading artifacts" not in result.output
    assert default_experiment_is_empty(standalone)


def test_an_experiment_the_user_names_is_kept(standalone):
    raw_data = f"runs:/{only_run(standalone, 'download_dataset').info.run_id}/raw_data"
    result = standalone.mlflow_step("preprocess", "--experiment-name", "mine", "-P", f"raw_data={raw_data}")
    assert result.returncode == 0, result.output[-3000:]
    [run] = standalone.runs("mine")
    assert run.info.run_name == "preprocess" and run.info.status == "FINISHED"
    assert f"run with ID '{run.info.run_id}'" in result.output  # the run `mlflow run` opened


@pytest.mark.slow  # ~30 s: the default suite keeps under 15 min
def test_wandb_holds_the_model_that_evaluate_refers_to(standalone, preprocessed):
    splits = f"runs:/{only_run(standalone, 'preprocess').info.run_id}/splits"
    trained = standalone.mlflow_step("train_model", "-P", f"splits={splits}", "-P", "epochs=1")
    assert trained.returncode == 0, trained.output[-3000:]
    assert "Pickle" not in trained.output
    train_id = only_run(standalone, "train_model").info.run_id
    [model] = [r.artifact for r in wandb_run_of(standalone, "train_model") if r.HasField("artifact")]
    assert (model.name, model.type) == ("classifier", "model")
    assert f"mlflow-{train_id}" in model.aliases
    assert any(Path(f.path).name == "MLmodel" for f in model.manifest.contents)

    model_uri = f"runs:/{train_id}/classifier"
    evaluated = standalone.mlflow_step(
        "evaluate", "-P", f"model={model_uri}", "-P", f"splits={splits}", "-P", "min_accuracy=0.5"
    )
    assert evaluated.returncode == 0, evaluated.output[-3000:]
    assert "predicting: 100%" not in evaluated.stderr  # not a terminal: no progress bars in its log
    assert "Downloading artifacts" not in evaluated.output
    config = {
        u.key: u.value_json
        for r in wandb_run_of(standalone, "evaluate")
        if r.HasField("config")
        for u in r.config.update
    }
    assert config["input.model.wandb"] == f'"classifier:mlflow-{train_id}"'  # resolves to the artifact above
    assert default_experiment_is_empty(standalone)


def test_a_wrong_parameter_name_is_one_line_naming_the_parameters(standalone):
    typo = ["-P", "raw_data=runs:/0123/raw_data", "-P", "sed=7"]
    result = standalone.mlflow_step("preprocess", "--experiment-name", "typos", *typo)  # not in Default
    assert result.returncode != 0
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: preprocess has no parameter 'sed' "
        "(its parameters: raw_data, val_size, test_size, num_classes, seed)"
    ]


def test_a_wrong_parameter_value_leaves_no_run_in_default(standalone):
    result = standalone.mlflow_step("preprocess", "-P", "raw_data=runs:/0123/raw_data", "-P", "seed=x")
    assert result.returncode != 0
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        "error: preprocess: argument --seed: invalid int value: 'x'"
    ]
    assert default_experiment_is_empty(standalone)
