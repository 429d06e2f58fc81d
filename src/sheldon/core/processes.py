"""Stop means stop: a signal becomes an exception that unwinds cleanly, a step dies with the
pipeline that launched it, and a run's owner process can be checked for life later.

A process is named by a token, `<host>/<pid>/<start time>`: a pid alone is reused by the system,
the start time tells the process that ran a pipeline from a later one that got its pid."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import psutil

PIPELINE_ENV = "SHELDON_PIPELINE_PROCESS"  # token of the pipeline that launched this step
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) raised in the main thread, so that every
    context manager on the way out undoes or closes what it holds."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.during = ""  # the pipeline step it stopped, if any
        self.resume = ""  # the command that continues that step from what it kept, if it kept any
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process a signal ended: 130 for SIGINT


def raise_on_signals() -> None:
    """Turn the first stop signal into `Interrupted`; later ones are ignored, so a second
    Ctrl-C cannot break the clean-up the first one started. Ignored at the system level: Python
    puts its own handlers back to the default as it exits, and a Ctrl-C then would kill the
    process with its exit code unsaid."""

    def handler(signum: int, _frame: object) -> None:
        for each in _SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        _received.append(signum)
        raise Interrupted(signum)

    for signum in _SIGNALS:
        signal.signal(signum, handler)


_received: list[int] = []  # the stop signal raise_on_signals turned into Interrupted


def as_interrupted(stop: KeyboardInterrupt) -> Interrupted:
    """The Interrupted a stop signal raised, also where a library waiting on it (Ray's wait for its
    tasks) raised a plain KeyboardInterrupt in its place."""
    if isinstance(stop, Interrupted):
        return stop
    return Interrupted(_received[0] if _received else signal.SIGINT)


def process_token() -> str:
    """This process's token."""
    return f"{socket.gethostname()}/{os.getpid()}/{psutil.Process().create_time():.2f}"


def _parse_token(token: str) -> tuple[str, int, str]:
    """A token's (host, pid, start time)."""
    host, pid, started = token.rsplit("/", 2)
    return host, int(pid), started


def is_alive(token: str) -> bool | None:
    """Whether the process a token names still runs; None when that cannot be told (another host,
    or not a token)."""
    try:
        host, pid, started = _parse_token(token)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        return f"{psutil.Process(pid).create_time():.2f}" == started
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def stop_step(pid: int, grace: float = 5.0) -> None:
    """Stop a launched step and all it started: SIGTERM to its process group (a step launched by a
    pipeline leads one: die_with_pipeline) or, in the moment before it made one, to it alone, so it
    unwinds and closes its runs; SIGKILL to whatever of its process tree is left after `grace` s."""
    try:
        step = psutil.Process(pid)
        tree = [step, *step.children(recursive=True)]
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            step.terminate()
    except (psutil.NoSuchProcess, ProcessLookupError):
        return
    _, left = psutil.wait_procs(tree, timeout=grace)
    for process in left:
        with suppress(psutil.NoSuchProcess):
            process.kill()


def die_with_pipeline(poll: float = 0.5, grace: float = 5.0) -> None:
    """In a step launched by a pipeline: when that pipeline's process is gone (kill -9 included),
    stop this step's process group (the step and torchrun's workers)."""
    token = os.environ.get(PIPELINE_ENV)
    if not token or is_alive(token) is not True:
        return  # not launched by a live pipeline on this host: nothing to watch
    if os.getppid() == _parse_token(token)[1]:  # the step itself, not one of torchrun's workers
        # A group of its own: the pipeline stops the step's whole tree with one signal, and the
        # terminal's Ctrl-C reaches the step only through the pipeline, which then stops it in order.
        with suppress(OSError):
            os.setpgid(0, 0)
    die_with(token, f"the pipeline that launched this step ({token})", poll, grace)


def die_with(token: str, owner: str, poll: float = 0.5, grace: float = 5.0) -> None:
    """When the process `token` names is gone (kill -9 included), stop this process, or the
    process group it leads: SIGTERM first, so it unwinds and closes its runs, SIGKILL after
    `grace` seconds. `owner` says what that process was, in the line printed then."""
    if is_alive(token) is not True:
        return  # on another host, or gone already: nothing to watch

    def watch() -> None:
        while is_alive(token):
            time.sleep(poll)
        print(f"error: {owner} is gone: stopping", file=sys.stderr)
        leader = os.getpgid(0) == os.getpid()
        stop = (lambda sig: os.killpg(0, sig)) if leader else (lambda sig: os.kill(os.getpid(), sig))
        stop(signal.SIGTERM)
        time.sleep(grace)
        stop(signal.SIGKILL)

    threading.Thread(target=watch, name="sheldon-owner-watch", daemon=True).start()


def when_gone(pid: int, command: list[str]) -> None:
    """Run `command` in the background, in a session of its own, once process `pid` has exited
    (it need not be our child: its exit is polled)."""
    wait = "import os, psutil, sys\ntry:\n    psutil.Process(int(sys.argv[1])).wait()\n"
    wait += "except psutil.NoSuchProcess:\n    pass\nos.execv(sys.argv[2], sys.argv[2:])"
    subprocess.Popen(
        [sys.executable, "-c", wait, str(pid), *command],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def use_this_python() -> None:
    """A step's command starts with `python`: the one beside this interpreter, so
    `.venv/bin/python main.py` works without an activated venv."""
    here, path = str(Path(sys.executable).parent), os.environ.get("PATH", "")
    if here not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([here, path])


def peak_memory_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB (Linux, macOS)."""
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10  # bytes on macOS, KiB on Linux
    return (
        max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        * scale
    )
