"""Interpreters started ahead of their step (sheldon/engine/launchers/prestart.py, template.py), with real
processes: what a script sees when it runs in one, its exit code, and that nothing is left of those never
used."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers.checkout import REPO

from sheldon.core.vocabulary import SHARED_TEMPLATE_ENV
from sheldon.engine.launchers.prestart import Prestarted, python_script

SCRIPT = '''"""A step that reports what it sees."""
import json
import os
import sys
from pathlib import Path


def warm_up():
    Path("warmed").write_text(str(os.getpid()))


if __name__ == "__main__":
    Path("seen.json").write_text(json.dumps({
        "argv": sys.argv, "value": os.environ.get("SHELDON_TEST_VALUE"), "pid": os.getpid(),
        "cwd": os.getcwd(), "group": os.getpgid(0), "path0": sys.path[0], "parent": os.getppid(),
    }))
    sys.exit(int(os.environ.get("SHELDON_TEST_EXIT", "0")))
'''
COMMAND = "python run.py --name {name} --count {count}"


def mlproject(command: str) -> str:
    return f"name: demo\nentry_points:\n  main:\n    command: {json.dumps(command)}\n"


@pytest.fixture
def step(tmp_path, monkeypatch) -> Path:
    """A step folder holding SCRIPT as run.py and an MLproject that runs it with COMMAND, and
    this interpreter's `python` first on PATH."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "run.py").write_text(SCRIPT)
    (tmp_path / "MLproject").write_text(mlproject(COMMAND))
    return tmp_path


def wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.parametrize(
    "command",
    [
        "python run.py --splits {splits} --epochs {epochs}",
        "python3 train.py",
        "python run.py",
    ],
)
def test_a_plain_python_command_is_started_ahead(command):
    found = python_script(command, f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert found is not None and found[1] == command.split()[1]
    assert Path(found[0]).name == command.split()[0]


@pytest.mark.parametrize(
    "command",
    [
        "bash run.sh {x}",
        "python -m mypackage --x {x}",
        "python run.py --x {x} && echo done",
        "python run.py --home $HOME",
        "python run.py --x {x} *.txt",
        "python run.py --x {x} # note",
        "python run.py > log.txt",
        "python run.py 'unclosed",
        "python",
    ],
)
def test_a_command_that_needs_a_shell_or_is_no_script_starts_as_mlflow_starts_it(command):
    assert python_script(command) is None


def test_the_script_runs_in_the_interpreter_started_for_it_with_its_arguments_and_environment(step):
    with Prestarted() as prestarted:
        prestarted.prepare(step)
        wait_for(step / "warmed")  # warm_up ran before the step launched
        env = os.environ | {"SHELDON_TEST_VALUE": "from the launch", "SHELDON_TEST_EXIT": "3"}
        process = prestarted.run(step, "python run.py --name 'two words' --count 2", env)
        assert process is not None
        assert process.wait(timeout=60) == 3  # the script's exit code is the process's
    seen = json.loads((step / "seen.json").read_text())
    assert seen["argv"] == ["run.py", "--name", "two words", "--count", "2"]
    assert seen["value"] == "from the launch"
    assert seen["pid"] == int((step / "warmed").read_text()) == process.pid
    assert seen["cwd"] == str(step) and seen["path0"] == str(step.resolve())
    assert seen["group"] == process.pid  # a process group of its own, as a launched step has


def test_a_script_that_raises_exits_1_with_its_traceback(step, capfd):
    (step / "run.py").write_text('if __name__ == "__main__":\n    raise ValueError("bad input")\n')
    with Prestarted() as prestarted:
        prestarted.prepare(step)
        process = prestarted.run(step, "python run.py", dict(os.environ))
        assert process is not None and process.wait(timeout=60) == 1
    assert "ValueError: bad input" in capfd.readouterr().err


def test_a_script_that_cannot_be_imported_fails_when_it_runs_not_before(step, capfd):
    (step / "run.py").write_text("def (:\n")
    with Prestarted() as prestarted:
        prestarted.prepare(step)
        time.sleep(1)
        assert capfd.readouterr().err == ""  # nothing said while it waited
        process = prestarted.run(step, "python run.py", dict(os.environ))
        assert process is not None and process.wait(timeout=60) == 1
    assert "SyntaxError" in capfd.readouterr().err


def test_interpreters_no_step_used_are_stopped_and_never_run_their_script(step):
    other = step.with_name(f"{step.name}_other")
    shutil.copytree(step, other)
    with Prestarted() as prestarted:
        prestarted.prepare(step)
        prestarted.prepare(other)
        wait_for(step / "warmed")
        waiting = [psutil.Process(int((step / "warmed").read_text()))]
        assert started_ahead() != []  # the template and its forks
    assert started_ahead() == []  # gone when the block ends, not some time after
    _, alive = psutil.wait_procs(waiting, timeout=10)
    assert alive == []
    assert not (step / "seen.json").exists() and not (other / "seen.json").exists()


TRIAL = """import os, sys
from pathlib import Path
from sheldon.engine.launchers.prestart import Prestarted

step = Path(sys.argv[1])
with Prestarted() as prestarted:
    prestarted.prepare(step)
    if sys.argv[2] == "launch":
        process = prestarted.run(step, "python run.py --name trial --count 1", dict(os.environ))
        sys.exit(process.wait(timeout=60))
    warmed = step / "warmed"
    while not (warmed.exists() and warmed.read_text()):  # its interpreter is ready; the trial ends
        pass
"""


def test_a_sweeps_trials_in_other_processes_fork_their_steps_from_the_template_it_shares(step, monkeypatch):
    """Hydra's joblib workers: one template for the sweep, not one each. A trial that ends
    without launching the step it prepared leaves no interpreter behind, and the template serves on."""
    monkeypatch.setenv(SHARED_TEMPLATE_ENV, "")  # share() names it to the processes started after
    with Prestarted() as prestarted:
        prestarted.share(shutil.which("python"))
        [template] = started_ahead()
        trial = [sys.executable, "-c", TRIAL, str(step)]
        subprocess.run([*trial, "launch"], check=True, timeout=120)
        seen = json.loads((step / "seen.json").read_text())
        assert seen["argv"] == ["run.py", "--name", "trial", "--count", "1"]
        assert seen["parent"] == template.pid  # forked from the shared template, started by nobody else
        (step / "warmed").unlink()
        subprocess.run([*trial, "prepare only"], check=True, timeout=120)
        unused, deadline = int((step / "warmed").read_text()), time.monotonic() + 10
        while psutil.pid_exists(unused) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not psutil.pid_exists(unused) and started_ahead() == [template]
        (step / "seen.json").unlink()
        subprocess.run([*trial, "launch"], check=True, timeout=120)  # it serves the trials after
        assert json.loads((step / "seen.json").read_text())["parent"] == template.pid
    assert started_ahead() == []


def started_ahead() -> list[psutil.Process]:
    """This test's interpreters started ahead: the template (a child) and its forks."""
    children = psutil.Process().children(recursive=True)
    return [
        p
        for p in children
        if p.status() != psutil.STATUS_ZOMBIE and "sheldon.engine.launchers.template" in p.cmdline()
    ]


IMPORTED = """import atexit, os, tempfile
from pathlib import Path

with open(Path(__file__).with_name("imports.log"), "a") as log:
    log.write(f"{os.getpid()}\\n")
FOLDER = tempfile.TemporaryDirectory()  # as wandb makes its media folder, removed at exit
atexit.register(FOLDER.cleanup)
"""
USER = """import os, sys
from pathlib import Path
import shared

if __name__ == "__main__":
    Path(shared.FOLDER.name, f"{sys.argv[1]}.txt").write_text("written")
    Path(f"folder-{sys.argv[1]}").write_text(shared.FOLDER.name)
"""


def test_steps_share_the_imports_made_once_and_the_temporary_folders_those_made(step):
    """A library imported by the template is not imported again by each step; a temporary folder
    it made at import outlives the first step to end (wandb's media folder did not) and is
    removed with the template."""
    (step / "shared.py").write_text(IMPORTED)
    (step / "run.py").write_text(USER)
    other = step.with_name(f"{step.name}_other")
    shutil.copytree(step, other)
    (other / "shared.py").unlink()  # found only in the template, imported for the first step
    (other / "run.py").write_text(USER.replace("import shared", "import sys\nshared = sys.modules['shared']"))
    with Prestarted() as prestarted:
        prestarted.prepare(step)
        prestarted.prepare(other)
        for folder, name in ((step, "first"), (other, "second")):
            process = prestarted.run(folder, f"python run.py {name}", dict(os.environ))
            assert process is not None and process.wait(timeout=60) == 0
        shared = Path((step / "folder-first").read_text())
        assert (other / "folder-second").read_text() == str(shared)
        assert sorted(p.name for p in shared.iterdir()) == ["first.txt", "second.txt"]
    assert len((step / "imports.log").read_text().split()) == 1  # once, in the template
    assert not shared.exists()


def test_a_step_killed_by_a_signal_does_not_pass_for_one_that_succeeded(step):
    kill = "os.kill(os.getpid(), signal.SIGKILL)"
    (step / "run.py").write_text(f"import os, signal\nif __name__ == '__main__':\n    {kill}\n")
    with Prestarted() as prestarted:
        prestarted.prepare(step)
        process = prestarted.run(step, "python run.py", dict(os.environ))
        assert process is not None and process.wait(timeout=60) == -signal.SIGKILL


def test_a_step_with_no_interpreter_started_is_left_to_mlflow(step):
    with Prestarted() as prestarted:
        assert prestarted.run(step, "python run.py", dict(os.environ)) is None
        (step / "MLproject").write_text(mlproject("python run.py && echo done"))
        prestarted.prepare(step)
        assert prestarted.run(step, "python run.py && echo done", dict(os.environ)) is None
        (step / "MLproject").write_text("entry_points: [")  # MLflow names the problem at launch
        prestarted.prepare(step)
        assert prestarted.run(step, "python run.py", dict(os.environ)) is None


HEAVY = ("torch", "sklearn", "matplotlib")
USES = {  # what each step's code needs of HEAVY: importing its run.py loads no more
    "download_dataset": set(),
    "preprocess": {"sklearn"},
    "train_model": {"torch"},
    "evaluate": {"torch", "matplotlib"},  # its metrics are numpy: sklearn is ~1 s of import
}


@pytest.mark.parametrize("step", sorted(USES))
def test_a_step_imports_only_what_it_uses(step):
    load = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('step', 'run.py')\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['step'] = module\n"
        "spec.loader.exec_module(module)\n"
        f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", load], cwd=REPO / "src" / step, capture_output=True, text=True, check=True
    )
    assert set(json.loads(result.stdout.splitlines()[-1])) == USES[step]
