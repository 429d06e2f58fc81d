"""Fixtures of the step package's tests: each test's own tracking store and W&B folder."""

from __future__ import annotations

import mlflow
import pytest


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
