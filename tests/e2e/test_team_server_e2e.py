"""Two clones of the repo share a team's tracking server (`make server`: a real `mlflow server`, its
artifacts in an S3 bucket on moto's server, proxied) and its DVC remote in the same object store."""

from __future__ import annotations

import pytest
from helpers.object_store import moto_s3
from helpers.project import SHRUNK, STEPS, make_project, said, summary_status
from helpers.team_server import banner_url, clean_env, start_server

from sheldon.core.processes import stop_step

ARTIFACTS = "s3://team-artifacts/mlflow"
DATA_REMOTE = "s3://team-data/dvc"


@pytest.fixture(scope="module")
def store():
    with moto_s3("team-artifacts", "team-data", check_keys=True) as store:
        yield store


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
