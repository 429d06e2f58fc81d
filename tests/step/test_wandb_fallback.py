"""W&B with a bad key, an unreachable host or a silent one: a real step logs offline after one line
saying so, within seconds; with WANDB_MODE=online set by the user it fails with one line instead.
Only W&B's cloud is imitated, on 127.0.0.1; MLflow and W&B (offline) are real."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import mlflow
import pytest
from helpers.http_server import Route, free_port, silent_listener, start, stop

from sheldon.core.errors import StepError
from sheldon.step.tracking import WANDB_SETTLED, settle_wandb_mode, step_run

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"
pytestmark = pytest.mark.usefixtures("trackers")  # set up before the fixtures below change it


@pytest.fixture
def wandb_unset(monkeypatch) -> None:
    """A fake API key and no WANDB_MODE; what settle_wandb_mode exports is put back afterwards."""
    for name in ("WANDB_MODE", WANDB_SETTLED):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)


@pytest.fixture(params=["bad key", "unreachable", "silent"])
def broken_cloud(request, wandb_unset, monkeypatch) -> Iterator[str]:
    """WANDB_BASE_URL at a W&B imitation broken one way; yields what the notice says of it."""
    if request.param == "bad key":
        state, httpd = start({"/graphql": Route(b'{"errors": [{"message": "bad key"}]}', status=401)})
        monkeypatch.setenv("WANDB_BASE_URL", state.url)
        yield "rejected the API key (HTTP 401)"
        stop(state, httpd)
    elif request.param == "unreachable":
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")
        yield "is unreachable (Connection refused)"
    else:
        with silent_listener() as listener:
            monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
            yield "is unreachable (no answer in 5 s)"


def host() -> str:
    return os.environ["WANDB_BASE_URL"].removeprefix("http://")


def test_a_broken_cloud_means_offline_after_one_line(broken_cloud, tmp_path, capfd):
    started = time.monotonic()
    with step_run("demo", {"alpha": 1}) as run:
        run.log_metrics({"loss": 0.5})
    took = time.monotonic() - started
    said = [line for line in capfd.readouterr().err.splitlines() if "W&B" in line]
    assert said == [
        f"W&B at {host()} {broken_cloud}: logging offline instead (upload later with `wandb sync`)"
    ]
    assert mlflow.get_run(run.run_id).info.status == "FINISHED"
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    print(f"fallback took {took:.1f} s")
    assert took < 20


def test_an_explicit_online_fails_in_one_line(broken_cloud, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    started = time.monotonic()
    with pytest.raises(StepError) as raised, step_run("demo", {}):
        pass
    took = time.monotonic() - started
    assert str(raised.value) == (
        f"W&B at {host()} {broken_cloud} and WANDB_MODE=online: check the key (`wandb login --relogin`) "
        "and WANDB_BASE_URL, or unset WANDB_MODE to log offline"
    )
    print(f"error took {took:.1f} s")
    assert took < 20


def test_the_pipeline_settles_once_for_its_steps(wandb_unset, monkeypatch, capfd):
    state, httpd = start({"/graphql": Route(b"", status=401)})
    monkeypatch.setenv("WANDB_BASE_URL", state.url)
    try:
        assert settle_wandb_mode() == "offline"
        assert os.environ["WANDB_MODE"] == "offline"  # what each step process inherits
        assert settle_wandb_mode() == "offline"
    finally:
        stop(state, httpd)
    assert state.hits["/graphql"] == 1
    assert len(capfd.readouterr().err.splitlines()) == 1


def test_an_accepted_key_goes_online_and_a_settled_online_is_not_checked_again(wandb_unset, monkeypatch):
    state, httpd = start({"/graphql": Route(b'{"data": {"viewer": {"id": "VXNlcjox"}}}')})
    monkeypatch.setenv("WANDB_BASE_URL", state.url)
    try:
        assert settle_wandb_mode() == "online"
        state.routes["/graphql"].status = 401  # a step process trusts the pipeline's decision
        assert settle_wandb_mode() == "online"
    finally:
        stop(state, httpd)
    assert state.hits["/graphql"] == 1
