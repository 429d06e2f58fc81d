"""The template interpreter, and the step interpreters forked from it: this module runs in those
processes, never in the pipeline's. The pipeline's side (why steps start this way, and what
starts this module) is sheldon/engine/launchers/prestart.py, which imports `send` from here.

The template imports what every step needs, and does nothing else, so that forking it stays
safe: no thread, no store connection, no torch operation. Each fork is a step's interpreter: it
imports the step's script and runs its `warm_up()` (work that costs the same on every run and
needs no argument: train_model builds an optimizer, whose first construction imports ~800
modules), opens the tracking store, and waits to be launched. When the script has ended and its
exit handlers have run, it exits at once instead of tearing its modules down one by one (~1 s a
step).

What crosses between the processes (the one description of it):

- Start: `python -m sheldon.engine.launchers.template OWNER [LISTENING]`, the numbers of two
  inherited sockets (AF_UNIX, SOCK_SEQPACKET): OWNER, the template's end of a pair whose other
  end the starting pipeline keeps; LISTENING, bound to a path in a private folder, where the
  pipelines of other processes (a sweep's trials) connect.
- Fork request, pipeline to template, on OWNER or a connection: one packet, the JSON
  `{"dir": <step folder>, "script": <script>}`, carrying one file descriptor: the fork's channel,
  one end of a stream socket pair whose other end the pipeline keeps.
- On a fork's channel, JSON messages, one a line: fork to pipeline `{"pid": <its pid>}` once
  forked; pipeline to fork `{"argv": [...], "env": {...}}` to launch it; fork to pipeline
  `{"exit": <code>}` as it exits. A pipeline that closes the channel instead of launching ends
  the fork quietly; a channel closed without an exit code means the fork was killed.
- A pipeline that hangs up its request socket: the template stops the forks made for it that no
  step was launched in. The owner hanging up: the template stops every such fork, removes the
  temporary folders it kept, and exits."""

from __future__ import annotations

import atexit
import gc
import importlib.util
import json
import os
import runpy
import select
import selectors
import signal
import socket
import sys
import tempfile
import weakref
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any


def send(channel: socket.socket, message: dict[str, Any]) -> None:
    """One message on a fork's channel: a line of JSON."""
    channel.sendall(json.dumps(message).encode() + b"\n")


def preload(script: str) -> None:
    """Import what the script imports (its top level, not its `__main__` block), run its
    `warm_up()`, and open the tracking store. Nothing here may fail the step: a script that
    cannot be imported fails when it runs, and says why there."""
    with suppress(Exception):
        if callable(warm_up := getattr(_import_script(script), "warm_up", None)):
            warm_up()
    with suppress(Exception):
        import mlflow

        if os.environ.get("MLFLOW_TRACKING_URI"):  # a pipeline's store, made: schema checked, cached
            mlflow.MlflowClient().search_experiments(max_results=1)


def _import_script(script: str) -> Any:
    spec = importlib.util.spec_from_file_location("_sheldon_prestarted_step", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


def _import_common() -> None:
    """What every step's runs need, imported once in the template: ~3 s here."""
    with suppress(Exception):
        import mlflow  # noqa: F401
        import wandb  # noqa: F401  (sheldon.step.tracking imports it when a step's runs open)
        import wandb.sdk.launch.inputs.internal  # noqa: F401  (wandb.init imports it: ~0.5 s)

        for module in store_modules():
            importlib.import_module(module)  # code only: no connection


def store_modules() -> list[str]:
    """The modules of the tracking store's own code that MLFLOW_TRACKING_URI needs beyond mlflow's
    (a database's: ~0.7 s of import)."""
    from sheldon.engine.mlflow_internals import DATABASE_ENGINES

    scheme = os.environ.get("MLFLOW_TRACKING_URI", "").split(":")[0].split("+")[0]
    return ["mlflow.store.tracking.sqlalchemy_store"] if scheme in DATABASE_ENGINES else []


_exit_code = [1]  # what an interpreter whose script raised ends with
_reports_to: list[socket.socket] = []  # a step's interpreter: the pipeline's end of its channel


def _exit_at_once() -> None:
    """The last exit handler (registered before any import): report the exit code, then exit
    without tearing modules down."""
    sys.stdout.flush()
    sys.stderr.flush()
    for channel in _reports_to:
        with suppress(OSError):  # the pipeline is gone (kill -9): nobody to tell
            send(channel, {"exit": _exit_code[0]})
    os._exit(_exit_code[0])


_ended: set[int] = set()  # forks reaped since the template last looked


def _reap(*_: object) -> None:
    """Collect ended forks at once: a stopped step is gone only once it is reaped."""
    with suppress(ChildProcessError):
        while (pid := os.waitpid(-1, os.WNOHANG)[0]) > 0:
            _ended.add(pid)


def serve(owner: socket.socket, listening: socket.socket | None = None) -> None:
    """The template interpreter: import the common modules, then fork an interpreter for each
    step asked for, importing the step's script first. Requests come from the pipeline that
    started it (`owner`) and, when `listening`, from the pipelines that connect (a sweep's trials
    in other processes). When a pipeline hangs up, stop the forks made for it that no step was
    launched in; when the owner does, stop all those, remove the temporary folders kept, and exit."""
    signal.signal(signal.SIGCHLD, _reap)
    _import_common()
    kept = _keep_temporary_folders([])
    # Each pipeline's forks: pid -> the read end of a pipe the fork closes once launched.
    clients: dict[socket.socket, dict[int, int]] = {owner: {}}
    selector = selectors.DefaultSelector()
    for source in filter(None, (owner, listening)):
        selector.register(source, selectors.EVENT_READ)
    while owner in clients:
        for key, _ in selector.select():
            connection = key.fileobj
            assert isinstance(connection, socket.socket)
            if connection is listening:
                client = listening.accept()[0]
                selector.register(client, selectors.EVENT_READ)
                clients[client] = {}
                continue
            received, fds, _, _ = socket.recv_fds(connection, 4096, 1)
            if not received:  # the pipeline hung up
                selector.unregister(connection)
                _stop_unlaunched(clients.pop(connection))
                connection.close()
                if connection is owner:
                    break
                continue
            inherited = [*clients, *filter(None, [listening])]
            forked = _fork(json.loads(received), fds[0], inherited, clients.values(), kept)
            if forked:
                clients[connection][forked[0]] = forked[1]
        for forks in clients.values():  # close the pipes of ended forks
            for pid in forks.keys() & _ended:
                os.close(forks.pop(pid))
        _ended.clear()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for forks in clients.values():
        _stop_unlaunched(forks)
    for folder in kept:
        folder.cleanup()
    _exit_code[0] = 0


def _fork(
    request: dict[str, str],
    fd: int,
    inherited: list[socket.socket],
    forks: Iterable[dict[int, int]],
    kept: list[tempfile.TemporaryDirectory],
) -> tuple[int, int] | None:
    """Fork the interpreter of the step `request` names, handing it the channel `fd`: its pid
    and the read end of the pipe it closes once launched; None if its pipeline already gave it up.
    The fork closes what it inherits of the template's: `inherited` sockets, the `forks`' pipes."""
    os.set_inheritable(fd, False)  # the step's own subprocesses must not hold it open
    channel = socket.socket(fileno=fd)
    if _hung_up(channel):
        channel.close()
        return None
    # Imported here, kept for the steps after; an error shows when the step runs.
    with suppress(Exception), _script_path(request["dir"]):
        _import_script(request["script"])
    _keep_temporary_folders(kept)
    launched_r, launched_w = os.pipe()
    sys.stdout.flush()  # or what an import printed would be printed again by each fork
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for sock in inherited:
            sock.close()
        for pipe in [launched_r, *(pipe for pipes in forks for pipe in pipes.values())]:
            os.close(pipe)
        _serve_fork(request["dir"], request["script"], channel, launched_w)
    os.close(launched_w)
    channel.close()
    return pid, launched_r


def _stop_unlaunched(forks: dict[int, int]) -> None:
    """Stop the forks no step was launched in (they hold no run and no file), and close the pipes."""
    for pid, launched_r in forks.items():
        if select.select([launched_r], [], [], 0)[0] == []:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)
        os.close(launched_r)


def _keep_temporary_folders(kept: list[tempfile.TemporaryDirectory]) -> list[tempfile.TemporaryDirectory]:
    """Temporary folders made by the imports (wandb makes two) are removed at exit by a hook and a
    finalizer, which every fork inherits: the first step to end would remove them under the steps
    after it. The template takes them over, adding them to `kept`, and removes them as it exits."""
    for thing in gc.get_objects():  # type(), not isinstance(): some objects warn when asked
        if type(thing) is tempfile.TemporaryDirectory and thing not in kept:
            atexit.unregister(thing.cleanup)
            kept.append(thing)
        elif type(thing) is weakref.finalize and thing.atexit:
            held = thing.peek()
            if held and type(held[0]) is tempfile.TemporaryDirectory:
                thing.atexit = False
    return kept


def _hung_up(channel: socket.socket) -> bool:
    with suppress(BlockingIOError):
        return channel.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    return False


class _script_path:
    """sys.path[0] and the working folder as `python <script>` in `folder` has them, for a while."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __enter__(self) -> None:
        self.saved = sys.path[0], os.getcwd()
        sys.path[0] = str(Path(self.folder).resolve())
        os.chdir(self.folder)

    def __exit__(self, *exc: object) -> None:
        sys.path[0] = self.saved[0]
        os.chdir(self.saved[1])


def _serve_fork(folder: str, script: str, channel: socket.socket, launched: int) -> None:
    """A fork of the template, the interpreter of one step: preload, wait for the step's arguments
    and environment (end quietly if the pipeline closes the channel instead), then run the script
    as its `__main__`. Never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the step's own subprocesses are its to wait for
    os.setpgid(0, 0)  # as a launched step: the pipeline stops it, and its tree, as one
    _exit_code[0] = 0
    try:
        send(channel, {"pid": os.getpid()})
    except OSError:  # the pipeline is gone
        sys.exit(0)
    _reports_to.append(channel)
    os.chdir(folder)
    sys.path[0] = str(Path(script).resolve().parent)  # as `python <script>` has it
    preload(script)
    try:
        order = channel.makefile("rb").readline()
    except OSError:
        order = b""
    if order:
        os.close(launched)  # the template leaves a launched step alone
        _run_order(json.loads(order))
    sys.exit(_exit_code[0])


def _run_order(order: dict[str, Any]) -> None:
    os.environ.clear()
    os.environ.update(order["env"])
    sys.argv = order["argv"]
    sys.stdin = open(os.devnull)  # noqa: SIM115  (as good as a closed pipe, for the whole run)
    _exit_code[0] = 1
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        _exit_code[0] = 0
    except SystemExit as end:
        _exit_code[0] = end.code if isinstance(end.code, int) else 0 if end.code is None else 1
        raise


if __name__ == "__main__":
    atexit.register(_exit_at_once)  # first, so called after every other exit handler
    listening = socket.socket(fileno=int(sys.argv[2])) if len(sys.argv) > 2 else None
    serve(socket.socket(fileno=int(sys.argv[1])), listening)
