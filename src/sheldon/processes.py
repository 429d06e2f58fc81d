"""Stop means stop: a signal becomes an exception that unwinds cleanly, a step dies with the
pipeline that launched it, and a run's owner process can be checked for life later.

A process is named by a token, `<host>/<pid>/<start time>`: a pid alone is reused by the system,
the start time tells the process that ran a pipeline from a later one that got its pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress

import psutil

PIPELINE_ENV = "SHELDON_PIPELINE_PROCESS"  # token of the pipeline that launched this step
PROCESS_TAG = "sheldon.process"  # token of the process whose death means the run is dead
STOPPED_TAG = "sheldon.stopped"  # why a run was ended KILLED or FAILED from outside the step
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) raised in the main thread, so that every
    context manager on the way out undoes or closes what it holds."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.during = ""  # the pipeline step it stopped, if any
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process a signal ended: 130 for SIGINT


def raise_on_signals() -> None:
    """Turn the first stop signal into `Interrupted`; later ones are ignored, so a second
    Ctrl-C cannot break the clean-up the first one started."""
    fired = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if not fired.is_set():
            fired.set()
            raise Interrupted(signum)

    for signum in _SIGNALS:
        signal.signal(signum, handler)


def process_token(pid: int | None = None) -> str:
    """The token of a process (this one by default)."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}/{pid}/{psutil.Process(pid).create_time():.2f}"


def is_alive(token: str) -> bool | None:
    """Whether the process a token names still runs; None when it ran on another host (unknown)."""
    host, pid, started = token.rsplit("/", 2)
    if host != socket.gethostname():
        return None
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def stop_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM a process group, then SIGKILL what is left of it after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies (exited, not yet reaped by their parent) still count for killpg: look closer.
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def die_with_pipeline(poll: float = 0.5, grace: float = 5.0) -> None:
    """In a step launched by a pipeline: when that pipeline's process is gone (kill -9 included),
    stop this step's whole process group (the step, `mlflow run`, torchrun's workers): SIGTERM
    first, so the step unwinds and closes its runs, SIGKILL after `grace` seconds."""
    token = os.environ.get(PIPELINE_ENV)
    if not token or is_alive(token) is not True:
        return  # not launched by a live pipeline on this host: nothing to watch

    def watch() -> None:
        while is_alive(token):
            time.sleep(poll)
        print(f"error: the pipeline that launched this step ({token}) is gone: stopping", file=sys.stderr)
        group = os.getpgid(0)
        os.killpg(group, signal.SIGTERM)
        time.sleep(grace)
        os.killpg(group, signal.SIGKILL)

    threading.Thread(target=watch, name="sheldon-pipeline-watch", daemon=True).start()


def when_gone(pid: int, command: list[str]) -> None:
    """Run `command` in the background, in a session of its own, once process `pid` has exited
    (it need not be our child: its exit is polled)."""
    wait = "import psutil, subprocess, sys\ntry:\n    psutil.Process(int(sys.argv[1])).wait()\n"
    wait += "except psutil.NoSuchProcess:\n    pass\nsubprocess.run(sys.argv[2:])"
    subprocess.Popen(
        [sys.executable, "-c", wait, str(pid), *command],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
