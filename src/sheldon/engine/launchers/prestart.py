"""Step interpreters started ahead of their step: the pipeline's side, run in the pipeline's
process (and a sweep's). Starting Python and importing what a step needs (mlflow, wandb, torch,
sklearn: 2-4 s a step here) is most of what a short step costs. One template interpreter per
pipeline imports what every step needs (mlflow, wandb, the tracking store's code) once. Asked to
prepare a step, it imports the step's script (and with it torch or sklearn, kept for the steps
after) and forks: the fork is the step's interpreter. It runs the script's `warm_up()`, opens the
tracking store, then waits. Launching the step hands it the command's arguments and environment,
and it runs the script as `python run.py ...` would, in a process group of its own, reporting
its exit code to the pipeline. What runs in the template and its forks, and the socket protocol
between them and this process, is sheldon/engine/launchers/template.py, which this module starts
with `python -m`.

Forking a process whose imports are done costs milliseconds where a fresh interpreter costs
seconds of CPU, which on a small machine is time taken from the step that runs.

A sweep shares one template among its trials, wherever they run: the process that launches them
starts it listening on a socket (`Prestarted.share`), and trials in other processes (Hydra's joblib
workers) fork their steps from it too, rather than each importing everything again.

Only a plain `python <script>.py ...` command is started this way (every step sheldon makes);
any other command starts as MLflow starts it. The script is imported ahead, so its top level
should define things, not do them: the habit of keeping the work under `__main__`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from contextlib import nullcontext, suppress
from pathlib import Path

from sheldon.core.vocabulary import SHARED_TEMPLATE_ENV
from sheldon.engine.launchers.template import send
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
            send(self._channel, {"argv": argv, "env": env})
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
                [interpreter, "-m", "sheldon.engine.launchers.template", *map(str, passed)],
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
