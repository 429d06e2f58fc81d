"""Process tokens, `when_gone` and stop signals, with real processes: a run's owner can be told
alive or gone, a command runs once a process that is not our child has exited, a second Ctrl-C
cannot cut a clean-up short, and a stop that comes as a step is launched leaves no run open."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time

import mlflow
import pytest

from sheldon.core.processes import Interrupted, is_alive, process_token, when_gone
from sheldon.core.vocabulary import STOPPED_TAG
from sheldon.engine.launchers.local import start_local
from sheldon.engine.launchers.prestart import Prestarted


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


STOPPABLE = """
import signal, sys, time
from sheldon.core.processes import Interrupted, raise_on_signals
raise_on_signals()
try:
    print("ready", flush=True)  # inside: the test's first signal may land before the next line
    time.sleep(30)
except Interrupted as stop:
    print(f"cleaning up after {stop}", flush=True)
    time.sleep(1)  # a second Ctrl-C lands here, or as Python exits
    sys.exit(stop.exit_code)
"""


def test_a_second_stop_signal_cannot_cut_the_clean_up_short_nor_the_exit_code():
    child = subprocess.Popen([sys.executable, "-c", STOPPABLE], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline() == "cleaning up after stopped by SIGINT\n"
    child.send_signal(signal.SIGINT)  # the impatient second Ctrl-C
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 130


def test_a_stop_signal_while_python_exits_is_ignored_too():
    code = STOPPABLE.replace("time.sleep(1)", "pass") + "\n"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline().startswith("cleaning up")
    for _ in range(200):  # a burst of Ctrl-C while it exits: none may kill it with the default action
        if child.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)
        time.sleep(0.001)
    assert child.wait(timeout=30) == 130


class _StoppedAtHandOver(Prestarted):
    """A stop signal (Ctrl-C, or the sweep's process gone) that comes as the step is handed over."""

    def run(self, work_dir, command, env):
        raise Interrupted(signal.SIGINT)


def test_a_stop_as_a_step_is_launched_ends_the_run_it_opened_killed(config, tmp_path):
    import main  # the repo's root, which conftest puts on sys.path

    params, inputs = main.STEPS.settings(config, "evaluate")
    params |= {name: f"runs:/{'0' * 32}/{ref.split('/')[1]}" for name, ref in inputs.items()}
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.set_experiment("stopped-at-launch").experiment_id
        with _StoppedAtHandOver() as prestarted, pytest.raises(Interrupted):
            start_local(
                "evaluate", params, experiment_id=experiment, env_manager="local", prestarted=prestarted
            )
        (run,) = mlflow.MlflowClient().search_runs([experiment])
    finally:
        mlflow.set_tracking_uri(None)
    assert run.info.status == "KILLED"  # not RUNNING for ever: no step will close it
    assert run.data.tags[STOPPED_TAG] == "the pipeline was stopped by SIGINT"
