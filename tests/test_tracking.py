"""The shared step helper on a real sqlite store and W&B offline: both runs open and close
together, outputs carry digests, inputs are recorded for lineage."""

from __future__ import annotations

import mlflow
import pytest

from sheldon.tracking import step_run, wandb_reference


@pytest.fixture
def trackers(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("tracking")  # not whichever experiment an earlier test left active
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_wandb_reference_names_the_producing_run():
    assert wandb_reference("runs:/0123abcd/splits") == "splits:mlflow-0123abcd"
    assert wandb_reference("models:/m-42") == ""


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
