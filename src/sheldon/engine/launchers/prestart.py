"""Step interpreters started ahead of their step. Starting Python and importing what a step needs
(mlflow, wandb, torch, sklearn: 2-4 s a step here) is most of what a short step costs. One
template interpreter per pipeline imports what every step needs (mlflow, wandb, the tracking
store's code) once. Asked to prepare a step, it imports the step's script (and with it torch or
sklearn, kept for the steps after) and forks: the fork is the step's interpreter. It runs the
script's `warm_up()`, opens the tracking store, then waits. Launching the step hands it the
command's arguments and environment, and it runs the script as `python run.py ...` would, in a
process group of its own, reporting its exit code to the pipeline.

Forking a process whose imports are done costs milliseconds where a fresh interpreter costs
seconds of CPU, which on a small machine is time taken from the step that runs. The template
is kept fork-safe: it imports, and does nothing else (no thread, no store connection, no torch
operation; `warm_up()` runs in the fork).

A script may define `warm_up()`, for work that costs the same on every run and needs no
argument (train_model builds an optimizer, whose first construction imports ~800 modules). When
the script has ended and its exit handlers have run, the interpreter exits at once instead of
tearing its modules down one by one (~1 s a step).

A sweep shares one template among its trials, wherever they run: the process that launches them
starts it listening on a socket (`Prestarted.share`), and trials in other processes (Hydra's joblib
workers) fork their steps from it too, rather than each importing everything again.

Only a plain `python <script>.py ...` command is started this way (every step sheldon makes);
any other command starts as MLflow starts it. The script is imported ahead, so its top level
should define things, not do them: the habit of keeping the work under `__main__`."""

from __future__ import annotations

import atexit
import gc
import importlib.util
import json
import os
import re
import runpy
import select
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterable
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

from sheldon.core.vocabulary import SHARED_TEMPLATE_ENV
from sheldon.engine.mlproject import entry_command

_PYTHON = re.compile(r"python(\d+(\.\d+)?)?")
_SHELL = set("$`|&;<>()*?[]{}~#\\")  # what a shell would expand or act on, rather than pass on
_KILLED = -signal.SIGKILL  # the exit code of an interpreter that ended without saying (killed)


def python_script(command: str, path: str | None = None) -> tuple[str, str] | None:
    """The interpreter (found on `path`) and script of a `python <script>.py ...` entry-point
    command with nothing in it for a shell to do (its {parameter} fields aside); else None."""
    try:
        words = shlex.split(re.sub(r"\{\w+\}", "x", command))
    except ValueError:
        return None
    if len(words) < 2 or not _PYTHON.fullmatch(words[0]) or not words[1].endswith(".py"):
        return None
    if any(_SHELL & set(word) for word in words):
        return None
    interpreter = shutil.which(words[0], path=path)
    return (interpreter, words[1]) if interpreter else None


def _send(channel: socket.socket, message: dict[str, Any]) -> None:
    channel.sendall(json.dumps(message).encode() + b"\n")


class Forked:
    """A step's interpreter, forked by the template: its pid and exit code, read from the channel
    it was handed, which also carries its launch order. Waits like a subprocess.Popen."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._buffer = b""
        self._pid: int | None = None
        self.returncode: int | None = None

    def _read(self) -> bool:
        """Take one message from the interpreter; False once it has closed the channel."""
        while b"\n" not in self._buffer:
            chunk = self._channel.recv(4096)  # a stop signal raises here, losing nothing
            if not chunk:
                return False
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        self._pid = message.get("pid", self._pid)
        self.returncode = message.get("exit", self.returncode)
        return True

    @property
    def pid(self) -> int | None:
        """Its process id, once the template has forked it; None if it never was (template gone)."""
        while self._pid is None and self._read():
            pass
        return self._pid

    def launch(self, argv: list[str], env: dict[str, str]) -> bool:
        """Hand over the step's arguments and environment; False when nothing will take them
        (the interpreter died, or the template before forking it)."""
        try:
            _send(self._channel, {"argv": argv, "env": env})
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._channel.close()

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code, once it has ended (negative: ended by that signal, or killed)."""
        self._channel.settimeout(timeout)
        while self.returncode is None and self._read():
            pass
        if self.returncode is None:
            self.returncode = _KILLED
        return self.returncode


class _Template:
    """The template interpreter of one Python, seen from a pipeline: it forks, on request, an
    interpreter for a step. Started by this process, or joined: a sweep's, started by the process
    that launches its trials."""

    def __init__(self, requests: socket.socket, process: subprocess.Popen | None = None) -> None:
        self._requests = requests
        self.process = process  # None when joined: its starter ends it
        self._forks: list[Forked] = []
        self._socket_folder: str | None = None

    @classmethod
    def start(cls, interpreter: str, share: bool = False) -> _Template:
        """Start a template; `share`: listening, for the trials of a sweep in other processes,
        on a socket that SHARED_TEMPLATE_ENV names to the processes this one starts after."""
        requests, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listening, folder = _listening_socket() if share else (None, None)
        passed = [sock.fileno() for sock in (theirs, listening) if sock]
        with theirs, listening or nullcontext():
            process = subprocess.Popen(
                [interpreter, "-m", "sheldon.engine.launchers.prestart", *map(str, passed)],
                stdin=subprocess.DEVNULL,
                pass_fds=passed,
                process_group=0,  # the terminal's Ctrl-C reaches the pipeline, which stops in order
            )
        started = cls(requests, process)
        if folder:
            started._socket_folder = folder
            os.environ[SHARED_TEMPLATE_ENV] = json.dumps(
                {"python": interpreter, "socket": f"{folder}/socket"}
            )
        return started

    @classmethod
    def join(cls, interpreter: str) -> _Template | None:
        """The shared template of this Python that SHARED_TEMPLATE_ENV names; None if there is
        none, or it is gone."""
        with suppress(ValueError):
            shared = json.loads(os.environ.get(SHARED_TEMPLATE_ENV) or "{}")
            if shared.get("python") == interpreter:
                connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    connection.connect(shared["socket"])
                except OSError:
                    connection.close()
                    return None
                return cls(connection)
        return None

    def fork(self, work_dir: Path, script: str) -> Forked | None:
        ours, theirs = socket.socketpair()
        request = json.dumps({"dir": str(work_dir), "script": script}).encode()
        with theirs:
            try:
                socket.send_fds(self._requests, [request], [theirs.fileno()])
            except OSError:  # the template is gone (killed, out of memory)
                ours.close()
                return None
        self._forks.append(Forked(ours))
        return self._forks[-1]

    def close(self) -> None:
        """Let go of the template; it stops the forks no step of ours took. A template we started
        exits, stopping every fork left unlaunched (a launched step has ended by now, or stops on
        its own when its pipeline is gone)."""
        for forked in self._forks:
            forked.close()
        self._requests.close()
        if self.process is None:
            return
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._socket_folder:
            shutil.rmtree(self._socket_folder, ignore_errors=True)


def _listening_socket() -> tuple[socket.socket | None, str | None]:
    """A socket listening in a new private folder, and the folder; (None, None) if the system has
    no room for one (a socket path is at most ~100 bytes): the trials then start their own."""
    folder = tempfile.mkdtemp(prefix="sheldon-template-")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listening.bind(f"{folder}/socket")
        listening.listen()
    except OSError:
        listening.close()
        shutil.rmtree(folder, ignore_errors=True)
        return None, None
    return listening, folder


class Prestarted:
    """The interpreters started for steps that have not launched yet, by step folder; leaving a
    `with` block stops those no step used."""

    def __init__(self) -> None:
        self._templates: dict[str, _Template] = {}
        self._waiting: dict[Path, Forked] = {}

    def __enter__(self) -> Prestarted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, work_dir: Path) -> None:
        """Start the interpreter of the step in `work_dir` (an MLflow project)."""
        command = entry_command(work_dir)
        found = python_script(command, os.environ.get("PATH")) if command else None
        if found is None or work_dir in self._waiting:
            return
        interpreter, script = found
        if interpreter not in self._templates:
            self._templates[interpreter] = _Template.join(interpreter) or _Template.start(interpreter)
        if forked := self._templates[interpreter].fork(work_dir, script):
            self._waiting[work_dir] = forked

    def share(self, interpreter: str) -> None:
        """Start the template of `interpreter` now, for this process's pipelines and, through
        SHARED_TEMPLATE_ENV, those of the processes it starts after: a sweep's trials."""
        if interpreter not in self._templates:
            self._templates[interpreter] = _Template.start(interpreter, share=True)

    def run(self, work_dir: Path, command: str, env: dict[str, str]) -> Forked | None:
        """Run `command` (the step's entry point, parameters filled in) in the interpreter started
        for `work_dir`, with `env`; None when none was started or it is gone."""
        forked = self._waiting.pop(work_dir, None)
        # The command prepare() saw, with values MLflow quoted for the shell: split as bash would.
        if forked is None or not forked.launch(shlex.split(command)[1:], env):
            return None
        return forked

    def release(self) -> None:
        """Let go of the interpreters no step used, keeping the templates for later pipelines
        (a sweep's trials): each ends once it sees that no launch will come."""
        while self._waiting:
            self._waiting.popitem()[1].close()

    def close(self) -> None:
        """Stop the interpreters no step used (they hold no run and no file, only their imports)
        and the templates; when this returns, none of their processes is left."""
        self._waiting.clear()
        while self._templates:
            self._templates.popitem()[1].close()


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
            _send(channel, {"exit": _exit_code[0]})
    os._exit(_exit_code[0])


_ended: set[int] = set()  # forks reaped since the template last looked


def _reap(*_: object) -> None:
    """Collect ended forks at once: a stopped step is gone only once it is reaped."""
    with suppress(ChildProcessError):
        while (pid := os.waitpid(-1, os.WNOHANG)[0]) > 0:
            _ended.add(pid)


def template(owner: socket.socket, listening: socket.socket | None = None) -> None:
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
        _send(channel, {"pid": os.getpid()})
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
    template(socket.socket(fileno=int(sys.argv[1])), listening)
