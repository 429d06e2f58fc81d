"""Process tokens and `when_gone`, with real processes: a run's owner can be told alive or gone,
and a command runs once a process that is not our child has exited."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from sheldon.processes import is_alive, process_token, when_gone


def test_a_token_tells_a_live_process_from_a_gone_one_and_from_a_reused_pid():
    assert is_alive(process_token()) is True
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    host, _, started = process_token().rsplit("/", 2)
    try:
        assert is_alive(f"{host}/{child.pid}/{started}") is False  # same pid, another start time
    finally:
        child.kill()
        child.wait()
    assert is_alive(f"{socket.gethostname()}/{child.pid}/1.00") is False
    assert is_alive(f"elsewhere/{child.pid}/1.00") is None  # another host: cannot be told
    assert is_alive("not a token") is None


def test_when_gone_runs_the_command_after_the_process_exits(tmp_path):
    marker = tmp_path / "ran"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    when_gone(
        sleeper.pid,
        [sys.executable, "-c", "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()", str(marker)],
    )
    time.sleep(1)
    assert not marker.exists()  # the process still runs
    sleeper.wait()
    deadline = time.time() + 20
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists()
