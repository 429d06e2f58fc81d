"""Trials on a Ray cluster: `python main.py -m hydra/launcher=ray ...` runs each trial of a sweep
as a Ray task (Hydra's Ray launcher) on a cluster that is already running, at the address that
`hydra.launcher.ray.init.address` or RAY_ADDRESS gives.

Before the sweep opens, the cluster's address is checked (a TCP connection, ~ms): Ray's own
connect retries for minutes. A Ray worker does not inherit the sweep's environment, so what a
trial needs of it (the tracking store, W&B, the sweep's run, sheldon's settings, S3 credentials)
goes with the tasks as Ray's runtime_env; and each trial runs once (no retry by Ray)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from sheldon.core.errors import StepError
from sheldon.step.store import TIMEOUT_S, why_failed

RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
RAY_PORT = 6379  # a head node's default (`ray start --head`)
# The variables of the sweep's process that its trials read, as a joblib worker inherits them.
SENT_PREFIXES = ("MLFLOW_", "WANDB_", "SHELDON_", "AWS_")
FIX_ADDRESS = "start it (ray start --head), or check RAY_ADDRESS or hydra.launcher.ray.init.address"


def runs_on_ray(config: DictConfig) -> bool:
    """Whether the sweep's trials are Ray tasks (hydra/launcher=ray)."""
    return OmegaConf.select(config, "hydra.launcher._target_") == RAY_LAUNCHER


def ray_address(config: DictConfig) -> str:
    """The cluster's address: the launcher's setting, else RAY_ADDRESS (Ray reads it too)."""
    return str(
        OmegaConf.select(config, "hydra.launcher.ray.init.address") or os.environ.get("RAY_ADDRESS", "")
    )


def check_ray_cluster(config: DictConfig, timeout: float = TIMEOUT_S) -> None:
    """Raise StepError, with one line naming the address, unless the cluster's head accepts a
    connection."""
    address = ray_address(config)
    if not address:
        raise StepError(
            "hydra/launcher=ray runs the trials on a running Ray cluster: set RAY_ADDRESS=<head>:6379 "
            "or hydra.launcher.ray.init.address (`ray start --head` starts one)"
        )
    if address in ("auto", "local"):  # Ray's words for the cluster it finds on this machine, or a new one
        raise StepError(
            f"Ray address {address!r}: name the running cluster's head, <host>:<port> (RAY_ADDRESS or "
            "hydra.launcher.ray.init.address)"
        )
    parts = urlsplit(address if "://" in address else f"//{address}")  # ray://host:10001, host:port
    try:
        host, port = parts.hostname, parts.port or RAY_PORT
        if not host:
            raise ValueError("no host")
        socket.create_connection((host, port), timeout).close()
    except ValueError as err:  # a port that is not a number
        raise StepError(f"Ray address {address!r} is malformed ({err}): expected <host>:<port>") from None
    except OSError as err:
        raise StepError(
            f"Ray cluster {address} is unreachable ({why_failed(err, timeout)}): {FIX_ADDRESS}"
        ) from None


def prepare_tasks(config: DictConfig) -> None:
    """Once the sweep's run is open (SHELDON_SWEEP names it): give the trials' Ray tasks this
    process's variables that a trial reads (entries of the launcher's own runtime_env win), and
    run each trial once: Ray retries a task whose worker died (3 times by default), and a trial
    that ends the sweep (sys.exit) would run again as a new pipeline of it."""
    ray = config.hydra.launcher.ray
    with read_write(config.hydra), open_dict(ray.init), open_dict(ray.remote):
        runtime_env = OmegaConf.to_container(
            ray.init.get("runtime_env") or OmegaConf.create({}), resolve=True
        )
        sent = {name: value for name, value in os.environ.items() if name.startswith(SENT_PREFIXES)}
        runtime_env["env_vars"] = sent | dict(runtime_env.get("env_vars") or {})
        ray.init.runtime_env = runtime_env
        # The launcher asks for an object store of its size otherwise, which Ray refuses when it
        # joins a running cluster: the cluster's own is used.
        ray.init.object_store_memory = None
        ray.remote.setdefault("max_retries", 0)
