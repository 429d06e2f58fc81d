"""A team's tracking server (`make server`, sheldon/serving/server.py): a real `mlflow server` with a
sqlite db and its artifacts in an S3 bucket on moto's server, proxied; the pipeline run against it
from two clones; and every way the object store's credentials can be missing or wrong, each one line
before anything is logged."""

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
from helpers.object_store import NO_AWS_FILE, ObjectStore, moto_s3
from helpers.project import SHRUNK, STEPS, make_project, said, summary_status

from sheldon.core.errors import StepError
from sheldon.core.processes import stop_step
from sheldon.serving.server import wait_until
from sheldon.step.store import check_artifact_location

FAST_S = 15  # a refusal comes before anything slow starts
ARTIFACTS = "s3://team-artifacts/mlflow"
DATA_REMOTE = "s3://team-data/dvc"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any tracking, W&B or AWS settings: a member's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_", "AWS_", "SHELDON_"))}
    return env | {"AWS_SHARED_CREDENTIALS_FILE": NO_AWS_FILE, "AWS_CONFIG_FILE": NO_AWS_FILE} | extra


def start_server(tmp: Path, env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen:
    """`python -m sheldon.serving.server` on a free port; its log (the server's requests) to `log`, so that
    no pipe fills up and stalls it."""
    return subprocess.Popen(
        [sys.executable, "-m", "sheldon.serving.server", "--port", str(free_port()), *args],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w") if log else subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


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


def banner_url(server: subprocess.Popen) -> str:
    """The URL the server's banner announces, once it serves."""
    lines: list[str] = []

    def announced() -> None:
        lines.append(server.stdout.readline())
        if not lines[-1].startswith("tracking server http"):
            raise OSError("not yet")

    wait_until(announced, server, "python -m sheldon.serving.server")
    return lines[-1].split()[-1]


@pytest.mark.slow
def test_two_clones_share_the_team_server_its_bucket_and_the_dvc_remote(store, tmp_path):
    server = start_server(
        tmp_path,
        clean_env(**store.env),
        *("--db", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts", ARTIFACTS),
        log=tmp_path / "server.log",
    )
    try:
        url = banner_url(server)
        clones = []
        for member in ("alice", "bob"):
            (tmp_path / member).mkdir()
            clone = make_project(tmp_path / member)
            # The server holds the object store's keys; a member's are for the team's DVC remote only.
            clone.env |= {"MLFLOW_TRACKING_URI": url} | store.env
            clone.run("dvc", "remote", "add", "-d", "--local", "team", DATA_REMOTE)
            clones.append(clone)
        alice, bob = clones

        first = alice.mlflow_run(hydra_options=SHRUNK)
        assert first.returncode == 0, first.output[-4000:]
        assert summary_status(first.stdout) == dict.fromkeys(STEPS, "ran")
        stored = store.keys_in("team-artifacts", "mlflow/")
        for artifact in (
            "/artifacts/raw_data/",
            "/artifacts/splits/",
            "/artifacts/MLmodel",  # the trained model, a logged model: mlflow/<experiment>/models/m-<id>/
            "/artifacts/config.yaml",
        ):
            assert any(artifact in key for key in stored), (artifact, stored[:20])
        assert store.keys_in("team-data", "dvc/"), "the pinned data version was pushed to the team's remote"
        for run in alice.step_runs():
            assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "proxied: no member writes to S3"

        second = bob.mlflow_run(hydra_options=SHRUNK)
        assert second.returncode == 0, second.output[-4000:]
        assert summary_status(second.stdout) == dict.fromkeys(STEPS, "cached")
        assert "pulled the data version data.dvc pins" in second.stdout
        raw = {
            p.relative_to(alice.root): p.read_bytes()
            for p in (alice.root / "data/raw").rglob("*")
            if p.is_file()
        }
        assert raw and raw == {
            p.relative_to(bob.root): p.read_bytes() for p in (bob.root / "data/raw").rglob("*") if p.is_file()
        }
        assert not list(tmp_path.rglob("mlartifacts")), "artifacts went to the bucket, nowhere else"

        # The keys the server uses are revoked: the next pipeline stops before it opens a run.
        store.revoke_keys()
        before = len(bob.runs())
        stopped = bob.run("python", "main.py", *SHRUNK.split())
        assert stopped.returncode == 1
        assert said(stopped.stderr)[-1].startswith(
            f"error: tracking server {url} cannot reach its artifact store (HTTP 401: Failed to list "
            "artifacts in s3://team-artifacts/mlflow: The AWS Access Key Id you provided does not exist"
        )
        assert said(stopped.stderr)[-1].endswith("check the server's object-store credentials and bucket")
        assert len(bob.runs()) == before
    finally:
        stop_step(server.pid)
