"""A team's tracking server (`make server`, sheldon/serving/server.py): a real `mlflow server` with a
sqlite db and its artifacts in an S3 bucket on moto's server, proxied; every way the object store's
credentials can be missing or wrong, each one line before anything is logged (two clones sharing
it: tests/e2e/test_team_server_e2e.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from helpers.checkout import REPO
from helpers.http_server import free_port, silent_listener
from helpers.object_store import ObjectStore, moto_s3
from helpers.team_server import clean_env, start_server

from sheldon.core.errors import StepError
from sheldon.step.store import check_artifact_location

FAST_S = 15  # a refusal comes before anything slow starts
ARTIFACTS = "s3://team-artifacts/mlflow"


def refusal(tmp: Path, env: dict[str, str], *args: str) -> str:
    """The one line `python -m sheldon.serving.server` exits with, having started nothing."""
    began = time.monotonic()
    server = start_server(tmp, env, *args)
    out, err = server.communicate(timeout=120)
    assert server.returncode != 0, out + err
    assert time.monotonic() - began < FAST_S
    assert out == "" and len(err.strip().splitlines()) == 1, out + err
    assert not list(tmp.glob("**/*.db")), "nothing is created"
    return err.strip()


@pytest.fixture(scope="module")
def store():
    with moto_s3("team-artifacts", "team-data", check_keys=True) as store:
        yield store


def test_the_server_refuses_an_object_store_it_cannot_use(store: ObjectStore, tmp_path):
    env = clean_env(**store.endpoint_env)
    where = f"s3://team-artifacts at {store.endpoint}"
    db = ["--db", f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"]
    assert refusal(tmp_path, env, *db, "--artifacts", ARTIFACTS) == (
        f"error: no credentials for the artifact store {where}: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    )
    wrong = env | {"AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY": "wrong"}
    assert refusal(tmp_path, wrong, *db, "--artifacts", ARTIFACTS) == (
        f"error: the artifact store {where} refused these credentials (InvalidAccessKeyId): check "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    )
    good = env | store.keys
    assert refusal(tmp_path, good, *db, "--artifacts", "s3://no-such-bucket/mlflow") == (
        f"error: the artifact store's bucket s3://no-such-bucket at {store.endpoint} does not exist: "
        "create it"
    )
    nowhere = good | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    assert "is unreachable" in refusal(tmp_path, nowhere, *db, "--artifacts", ARTIFACTS)
    # No object store configured: the stand-in's artifacts live in memory, so a lasting db is refused.
    assert "the stand-in keeps artifacts in memory" in refusal(tmp_path, clean_env(), *db)


def test_the_server_refuses_a_port_in_use(tmp_path):
    with silent_listener() as taken:
        port = taken.getsockname()[1]
        line = refusal(tmp_path, clean_env(), "--port", str(port))
    assert line.startswith(f"error: cannot serve on 127.0.0.1:{port} (address already in use)")


def test_a_pipeline_that_would_write_to_a_bucket_it_has_no_credentials_for_stops_first(store, tmp_path):
    """Steps that write their artifacts to S3 themselves (an experiment whose artifact location is
    a bucket): missing credentials stop the pipeline before its run opens, in one line."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("sheldon", artifact_location=f"{ARTIFACTS}/direct")
    result = subprocess.run(
        [sys.executable, "main.py", "main.steps=download_dataset"],
        cwd=REPO,
        env=clean_env(MLFLOW_TRACKING_URI=uri, WANDB_MODE="offline", **store.endpoint_env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no credentials for the artifact store s3://team-artifacts at {store.endpoint}: set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    )
    assert mlflow.MlflowClient(uri).search_runs(["1"]) == [], "no run was opened"


def test_a_bucket_that_takes_the_keys_passes_and_a_proxied_store_needs_none(store, monkeypatch):
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in store.env.items():  # the member's keys, and no profile of this machine's
        monkeypatch.setenv(name, value)
    check_artifact_location(f"{ARTIFACTS}/direct")  # the member's keys: the bucket takes them
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(StepError, match="no credentials for the artifact store s3://team-artifacts"):
        check_artifact_location(f"{ARTIFACTS}/direct")
    check_artifact_location("mlflow-artifacts:/1")  # the server's business: checked through it
