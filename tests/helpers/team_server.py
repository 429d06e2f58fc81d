"""A team's tracking server started as a member starts it (`python -m sheldon.serving.server`),
from a member's clean shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.http_server import free_port
from helpers.object_store import NO_AWS_FILE

from sheldon.serving.server import wait_until


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


def banner_url(server: subprocess.Popen) -> str:
    """The URL the server's banner announces, once it serves."""
    lines: list[str] = []

    def announced() -> None:
        lines.append(server.stdout.readline())
        if not lines[-1].startswith("tracking server http"):
            raise OSError("not yet")

    wait_until(announced, server, "python -m sheldon.serving.server")
    return lines[-1].split()[-1]
