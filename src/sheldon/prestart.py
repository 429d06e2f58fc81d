"""Step interpreters started ahead of their step. Starting Python and importing what a step needs
(mlflow, wandb, torch, sklearn: 2-4 s a step here) is most of what a short step costs. The
pipeline starts the next step's interpreter while the current step works: it imports what the
step's script imports, opens the tracking store, then waits. Launching the step hands it the
command's arguments and environment, and it runs the script as `python run.py ...` would, in a
process group of its own.

A script may define `warm_up()`: the started interpreter calls it after the imports, for work
that costs the same on every run and needs no argument (train_model builds an optimizer, whose
first construction imports ~800 modules). When the script has ended and its exit handlers have
run, the interpreter exits at once instead of tearing its modules down one by one (~1 s a step).

Only a plain `python <script>.py ...` command is started this way (every step sheldon makes);
any other command starts as MLflow starts it. The script is imported once ahead, so its top
level should define things, not do them: the habit of keeping the work under `__main__`."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from sheldon.mlproject import entry_command

_PYTHON = re.compile(r"python(\d+(\.\d+)?)?")
_SHELL = set("$`|&;<>()*?[]{}~#\\")  # what a shell would expand or act on, rather than pass on


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


class Prestarted:
    """The interpreters started for steps that have not launched yet, by step folder; leaving a
    `with` block stops those no step used."""

    def __init__(self) -> None:
        self._waiting: dict[Path, subprocess.Popen] = {}

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
        self._waiting[work_dir] = subprocess.Popen(
            [interpreter, "-m", "sheldon.prestart", script],
            cwd=work_dir,
            stdin=subprocess.PIPE,
            process_group=0,  # as a launched step: the pipeline stops it, and its tree, as one
        )

    def run(self, work_dir: Path, command: str, env: dict[str, str]) -> subprocess.Popen | None:
        """Run `command` (the step's entry point, parameters filled in) in the interpreter started
        for `work_dir`, with `env`; None when none was started or it is gone."""
        process = self._waiting.pop(work_dir, None)
        if process is None:
            return None
        # The command prepare() saw, with values MLflow quoted for the shell: split as bash would.
        order = {"argv": shlex.split(command)[1:], "env": env}
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(order).encode() + b"\n")
            process.stdin.close()
        except OSError:  # it died while it waited (out of memory, killed)
            self._stop(process)
            return None
        return process

    def close(self) -> None:
        """Stop the interpreters no step used: they hold no run and no file, only their imports."""
        while self._waiting:
            self._stop(self._waiting.popitem()[1])

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        with suppress(ProcessLookupError):
            process.kill()
        process.wait()


def preload(script: str) -> None:
    """Import what the script imports (its top level, not its `__main__` block), run its
    `warm_up()`, and import what opening a step's runs needs. Nothing here may fail the step: a
    script that cannot be imported fails when it runs, and says why there."""
    with suppress(Exception):
        spec = importlib.util.spec_from_file_location("_sheldon_prestarted_step", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while they are made
        spec.loader.exec_module(module)
        if callable(warm_up := getattr(module, "warm_up", None)):
            warm_up()
    with suppress(Exception):
        import mlflow
        import wandb  # noqa: F401  (sheldon.tracking imports it when a step's runs open)
        import wandb.sdk.launch.inputs.internal  # noqa: F401  (wandb.init imports it: ~0.5 s)

        if os.environ.get("MLFLOW_TRACKING_URI"):  # a pipeline's store, made: schema checked, cached
            mlflow.MlflowClient().search_experiments(max_results=1)


def serve(script: str) -> None:
    """The started interpreter: preload, wait for the step's arguments and environment (end
    quietly if the pipeline closes the pipe instead), then run the script as its `__main__`."""
    exit_code = [1]  # what a script that raised ends with

    def exit_at_once() -> None:  # registered first, so called after every other exit handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code[0])

    atexit.register(exit_at_once)
    sys.path[0] = str(Path(script).resolve().parent)  # as `python <script>` has it
    preload(script)
    order = sys.stdin.readline()
    if not order:
        exit_code[0] = 0
        return
    launch = json.loads(order)
    os.environ.clear()
    os.environ.update(launch["env"])
    sys.argv = launch["argv"]
    sys.stdin = open(os.devnull)  # noqa: SIM115  (as good as a closed pipe, for the whole run)
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        exit_code[0] = 0
    except SystemExit as end:
        exit_code[0] = end.code if isinstance(end.code, int) else 0 if end.code is None else 1
        raise


if __name__ == "__main__":
    serve(sys.argv[1])
