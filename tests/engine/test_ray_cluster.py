"""The checks and the environment of a sweep on a Ray cluster (sheldon/engine/launchers/ray_cluster.py),
on the launcher's config as Hydra composes it; a real sweep through a real Ray head is in
test_sweep_e2e.py."""

from __future__ import annotations

import socket

import pytest
from helpers.checkout import REPO
from helpers.http_server import free_port
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sheldon.core.errors import StepError
from sheldon.core.vocabulary import SWEEP_ENV
from sheldon.engine.launchers.ray_cluster import check_ray_cluster, prepare_tasks, runs_on_ray

REPO_CONFIG = str(REPO)


def launcher(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=REPO_CONFIG, version_base=None):
        return compose(
            config_name="config", overrides=["hydra/launcher=ray", *overrides], return_hydra_config=True
        )


@pytest.fixture(autouse=True)
def no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_the_ray_launcher_is_recognised():
    assert runs_on_ray(launcher())
    with initialize_config_dir(config_dir=REPO_CONFIG, version_base=None):
        assert not runs_on_ray(compose(config_name="config", return_hydra_config=True))


@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        (None, "hydra/launcher=ray runs the trials on a running Ray cluster: set RAY_ADDRESS=<head>:6379"),
        ("auto", "Ray address 'auto': name the running cluster's head, <host>:<port>"),
        ("127.0.0.1:x", "Ray address '127.0.0.1:x' is malformed"),
    ],
)
def test_an_address_that_names_no_cluster_is_refused(address, complaint):
    config = launcher(*([f"hydra.launcher.ray.init.address={address}"] if address else []))
    with pytest.raises(StepError, match="^" + complaint.replace("(", r"\(").replace("[", r"\[")):
        check_ray_cluster(config)


def test_the_address_comes_from_the_config_else_ray_address(monkeypatch):
    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(
        StepError, match=rf"^Ray cluster 127.0.0.1:{port} is unreachable \(connection refused\)"
    ):
        check_ray_cluster(launcher())
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        check_ray_cluster(
            launcher(f"hydra.launcher.ray.init.address=ray://127.0.0.1:{head.getsockname()[1]}")
        )


def test_the_trials_get_the_sweeps_tracking_and_wandb_settings_and_keep_their_own(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv(SWEEP_ENV, "0123 sweep-x")
    monkeypatch.setenv("HOME", "/home/driver")
    config = launcher("+hydra.launcher.ray.init.runtime_env.env_vars.WANDB_MODE=online")
    prepare_tasks(config)
    init = config.hydra.launcher.ray.init
    env = init.runtime_env.env_vars
    assert env.MLFLOW_TRACKING_URI == "http://tracking:5000" and env[SWEEP_ENV] == "0123 sweep-x"
    assert env.WANDB_MODE == "online"  # the launcher's own setting wins
    assert "HOME" not in env  # a node's own
    assert init.object_store_memory is None  # Ray refuses one when it joins a running cluster
    assert config.hydra.launcher.ray.remote.max_retries == 0  # a trial runs once


def test_a_trial_may_be_retried_when_the_launcher_says_so():
    config = launcher("+hydra.launcher.ray.remote.max_retries=2")
    prepare_tasks(config)
    assert config.hydra.launcher.ray.remote.max_retries == 2
