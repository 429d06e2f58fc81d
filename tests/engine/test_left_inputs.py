"""What steps download is removed once their runs are over, even when a step was killed before it
could remove it: the next pipeline's start clears the folders of this store's ended runs."""

from __future__ import annotations

import mlflow

from sheldon.engine.launchers.runs import fail_dead_runs
from sheldon.step.artifacts import inputs_folder


def test_a_pipeline_start_removes_the_inputs_of_ended_runs_and_keeps_the_rest(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # this test's temporary folder
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.set_experiment("left-inputs").experiment_id
        client = mlflow.MlflowClient()
        ended, running = (client.create_run(experiment).info.run_id for _ in range(2))
        client.set_terminated(ended, "KILLED")  # a step killed after closing its run
        folders = {name: inputs_folder(name) for name in (ended, running, "another-stores-run")}
        for folder in folders.values():
            (folder / "tmp123").mkdir(parents=True)
        fail_dead_runs([experiment])
        assert not folders[ended].exists()
        assert folders[running].exists() and folders["another-stores-run"].exists()
    finally:
        mlflow.set_tracking_uri(previous)
