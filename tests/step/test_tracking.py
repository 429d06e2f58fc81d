"""The shared step helper on a real sqlite store and W&B offline: both runs open and close
together, outputs carry digests, inputs are recorded for lineage."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from sheldon.core.errors import StepError
from sheldon.core.processes import PIPELINE_ENV
from sheldon.core.vocabulary import parse_runs_uri, runs_uri
from sheldon.step.tracking import configured, missing_inputs, step_run, wandb_reference


def test_wandb_reference_names_the_producing_run():
    assert wandb_reference("runs:/0123abcd/splits") == "splits:mlflow-0123abcd"
    assert wandb_reference("models:/m-42") == ""
    assert wandb_reference("runs:/0123abcd/splits/") == "splits:mlflow-0123abcd"
    assert wandb_reference("runs:/0123abcd/model/data") == ""  # a file inside an artifact, not one


def test_a_runs_uri_is_built_and_parsed_in_one_place():
    assert runs_uri("0123abcd", "splits") == "runs:/0123abcd/splits"
    assert parse_runs_uri(runs_uri("0123abcd", "model/data")) == ("0123abcd", "model/data")
    assert parse_runs_uri("models:/m-42") is None


def test_step_run_logs_both_trackers_and_records_lineage(trackers):
    (trackers / "out").mkdir()
    (trackers / "out" / "a.txt").write_text("hello")
    with step_run("demo", {"alpha": 1}) as run:
        uri = run.log_artifact(trackers / "out", "things", "dataset")
        fetched = run.fetch_input("again", uri)
        run.log_metrics({"loss": 0.5}, step=1)
        run.headline("score", 0.75)
    assert (fetched / "a.txt").read_text() == "hello"
    logged = mlflow.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "demo"
    tags = logged.data.tags
    assert tags["sheldon.step"] == "demo" and tags["sheldon.headline"] == "score"
    assert tags["sheldon.input.again"] == uri and len(tags["sheldon.digest.things"]) == 64
    assert logged.data.params["alpha"] == "1" and logged.data.metrics["loss"] == 0.5
    offline = list((trackers / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_an_exception_fails_both_runs_and_propagates(trackers):
    with pytest.raises(RuntimeError, match="boom"), step_run("demo", {}) as run:
        raise RuntimeError("boom")
    assert mlflow.get_run(run.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None
    assert len(list((trackers / "wandb").glob("offline-run-*"))) == 1


@pytest.fixture
def on_its_own(trackers, monkeypatch):
    """A step launched by hand, not by a pipeline, with no experiment chosen: what a launch
    left in the environment (MLFLOW_RUN_ID, an experiment) is each test's to set."""
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", PIPELINE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    return mlflow.MlflowClient()


def launch_run(client, monkeypatch, experiment_id: str = "0") -> str:
    """A run as `mlflow run` opens one before the step starts: in an experiment, with its tags."""
    launch = client.create_run(experiment_id, tags={"mlflow.source.type": "PROJECT"})
    client.log_param(launch.info.run_id, "alpha", "1")
    monkeypatch.setenv("MLFLOW_RUN_ID", launch.info.run_id)
    return launch.info.run_id


def test_a_step_launched_into_default_moves_to_the_configured_experiment(on_its_own, monkeypatch, capsys):
    launch = launch_run(on_its_own, monkeypatch)
    with step_run("demo", {"alpha": 1}) as run:
        pass
    logged = mlflow.get_run(run.run_id)
    assert mlflow.get_experiment(logged.info.experiment_id).name == configured("main")["experiment_name"]
    assert logged.info.run_name == "demo" and logged.info.status == "FINISHED"
    assert logged.data.tags["mlflow.source.type"] == "PROJECT" and logged.data.params["alpha"] == "1"
    assert on_its_own.get_run(launch).info.lifecycle_stage == "deleted"  # no `mlflow run` above: at once
    assert on_its_own.search_runs(["0"]) == []
    assert (
        f"demo: run {run.run_id} in experiment 'sheldon' (config.yaml main.experiment_name)"
        in capsys.readouterr().out
    )


def test_a_step_run_py_itself_goes_to_the_configured_experiment(on_its_own):
    with step_run("demo", {}) as run:
        pass
    logged = mlflow.get_run(run.run_id)
    assert (
        mlflow.get_experiment(logged.info.experiment_id).name == "sheldon" and logged.info.run_name == "demo"
    )


def test_an_experiment_the_user_chose_keeps_the_launch_run_named_after_the_step(on_its_own, monkeypatch):
    chosen = on_its_own.create_experiment("mine")
    launch = launch_run(on_its_own, monkeypatch, chosen)
    with step_run("demo", {}) as run:
        pass
    assert run.run_id == launch and mlflow.get_run(launch).info.run_name == "demo"


def test_a_missing_input_stops_the_step_before_any_run_opens(on_its_own, monkeypatch):
    launch = launch_run(on_its_own, monkeypatch)
    with (
        pytest.raises(StepError) as raised,
        step_run("evaluate", {"model": "", "splits": "", "batch_size": 8}),
    ):
        pass
    assert str(raised.value) == (
        "evaluate needs model and splits: -P model=runs:/<train_model run id>/classifier "
        "-P splits=runs:/<preprocess run id>/splits (run ids are in the MLflow UI and a pipeline's "
        "summary), or let the pipeline find them: mlflow run . --env-manager local -P steps=evaluate"
    )
    assert on_its_own.search_runs([e.experiment_id for e in on_its_own.search_experiments()]) == []
    assert on_its_own.get_run(launch).info.lifecycle_stage == "deleted"
    assert not list(Path(os.environ["WANDB_DIR"]).glob("wandb/offline-run-*"))  # nor a W&B run


def test_run_py_itself_is_told_its_own_flags(on_its_own):
    assert missing_inputs("preprocess", {"raw_data": "", "seed": 7}).startswith(
        "preprocess needs raw_data: --raw_data runs:/<download_dataset run id>/raw_data ("
    )
    assert missing_inputs("preprocess", {"raw_data": "runs:/0a1b/raw_data"}) == ""
    assert missing_inputs("demo", {"anything": ""}) == ""  # config.yaml declares no inputs for it
