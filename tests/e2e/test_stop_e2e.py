"""Stop means stop, on the real stack: Ctrl-C or SIGTERM to a pipeline during a slow download
served from 127.0.0.1, and kill -9 during training. Afterwards no step process is alive, nothing
of the stopped step is kept (data/raw, data.dvc, the DVC remote), no MLflow run is RUNNING, and
a killed run is never reused."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers.datasets import digits
from helpers.dvc import git
from helpers.http_server import Route, start, stop
from helpers.project import SHRUNK, make_project, wandb_records

from sheldon.core.vocabulary import STOPPED_TAG
from sheldon.step.artifacts import inputs_folder


def tree(root: Path) -> dict[str, str]:
    """Every file under data/, the pin and the DVC remote, with its content digest."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in (root / "repo" / "data", root / "repo" / "data.dvc", root / "remote")
        for path in ([folder] if folder.is_file() else sorted(folder.rglob("*")) if folder.exists() else [])
        if path.is_file()
    }


@pytest.fixture
def versioned(tmp_path):
    """A repo copy under git with one data version in data/raw, pushed to its own DVC remote."""
    project = make_project(tmp_path)
    project.env["HOME"] = str(tmp_path / "home")
    git(project.root, "init", "-q")
    (project.root / ".dvc" / "config.local").write_text(
        f"['remote \"default\"']\n    url = {tmp_path / 'remote'}\n"
    )
    first = digits(tmp_path / "first", 100, seed=1) / "d.npz"
    result = project.run(
        "python", "main.py", "main.steps=download_dataset", "data.download_new=true", f"data.source={first}"
    )
    assert result.returncode == 0, result.output[-3000:]
    return project


def start_slow_download(project, command: list[str], *extra: str) -> tuple[subprocess.Popen, object, object]:
    """Start a download_new of a file the server sends at 4 KiB a second, in a session of its own
    (as a terminal would: its Ctrl-C goes to that process group); returns once the step is fetching."""
    payload = digits(project.home / "served", 4000, seed=2) / "d.npz"
    state, httpd = start({"/slow.npz": Route(payload.read_bytes(), trickle=4096)})
    overrides = ["main.steps=download_dataset", "data.download_new=true", f"data.source={state.url}/slow.npz"]
    overrides += extra
    args = (
        [*command, *overrides]
        if command[0] == "python"
        else [*command, "-P", f"hydra_options={' '.join(overrides)}"]
    )
    proc = subprocess.Popen(
        args,
        cwd=project.root,
        env=project.env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not state.hits["/slow.npz"] and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.hits["/slow.npz"], proc.communicate()
    time.sleep(1)  # some bytes are in
    return proc, state, httpd


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def alive_after(processes: list[psutil.Process], seconds: float) -> list[str]:
    """The processes still running `seconds` from now (sooner if all are gone)."""
    _, still = psutil.wait_procs(processes, timeout=max(seconds, 0))
    return [" ".join(p.cmdline()[:3]) for p in still if p.status() != psutil.STATUS_ZOMBIE]


def running_runs(project) -> list[str]:
    client = project.client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [
        f"{r.info.run_name} {r.info.run_id}"
        for r in client.search_runs(experiments, "attributes.status = 'RUNNING'")
    ]


@pytest.mark.parametrize(
    ("command", "signum", "code", "extra"),
    [
        (["mlflow", "run", ".", "--env-manager", "local"], signal.SIGINT, 1, ()),  # CLI: "Aborted!", 1
        (["python", "main.py"], signal.SIGINT, 130, ()),
        (["python", "main.py"], signal.SIGTERM, 143, ()),
        # the step must run, so its interpreter starts before the engine has loaded (prestart.py)
        (["python", "main.py"], signal.SIGINT, 130, ("main.use_cache=false",)),
    ],
    ids=["ctrl-c-mlflow-run", "ctrl-c-main", "sigterm-main", "ctrl-c-main-started-ahead"],
)
def test_a_stopped_download_keeps_nothing_and_leaves_no_process_or_running_run(
    versioned, command, signum, code, extra
):
    before = tree(versioned.home)
    # verbose: the pipeline prints each step's command
    proc, state, httpd = start_slow_download(versioned, command, "main.verbose=true", *extra)
    try:
        processes = descendants(proc)
        assert any(p.cwd() == str(versioned.root / "src" / "download_dataset") for p in processes)
        signalled = time.monotonic()
        os.killpg(proc.pid, signum)
        if signum == signal.SIGINT:  # an impatient user presses Ctrl-C again
            time.sleep(0.3)
            os.killpg(proc.pid, signum)
        out, err = proc.communicate(timeout=30)
        seconds = time.monotonic() - signalled
    finally:
        stop(state, httpd)
    # MLflow's own CLI, when the second Ctrl-C reaches it as it exits (after "Aborted!"), ends by
    # that signal rather than with 1: the clean-up below is done either way.
    accepted = (code, -signal.SIGINT) if command[0] == "mlflow" else (code,)
    assert proc.returncode in accepted, err[-3000:]
    assert (
        "  command: python run.py " in out
    )  # a step forked from the template (sheldon/engine/launchers/template.py)
    assert alive_after(processes, 10 - seconds) == []
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(signum).name} during download_dataset" in err
    assert tree(versioned.home) == before  # data/raw, data.dvc and the remote as they were
    assert running_runs(versioned) == []
    step = versioned.step_runs("download_dataset")[-1]
    assert step.info.status == "KILLED"
    exits = [r.exit.exit_code for r in wandb_records(versioned.wandb_runs()[-1]) if r.HasField("exit")]
    assert exits == [128 + signal.SIGTERM]  # the W&B run was closed (the pipeline stops steps with SIGTERM)


def start_pipeline(project, overrides: list[str], output: int) -> subprocess.Popen:
    """`python main.py` in a session (a terminal's process group) of its own, as a user starts it."""
    return subprocess.Popen(
        ["python", "main.py", *overrides],
        cwd=project.root,
        env=project.env,
        start_new_session=True,
        stdout=output,
        stderr=output,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_pipeline_leaves_no_orphan_and_its_runs_are_failed_and_never_reused(project, full_run):
    overrides = [*SHRUNK.split(), "train_model.seed=99", "train_model.epochs=3"]
    proc = start_pipeline(project, overrides, output=subprocess.DEVNULL)
    deadline, killed = time.time() + 180, None
    while time.time() < deadline and killed is None:
        time.sleep(1)
        killed = next((r for r in project.step_runs("train_model") if r.info.status == "RUNNING"), None)
    assert killed is not None, "train_model never started"
    processes = descendants(proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline's group: the step runs in a session of its own
    proc.wait()
    assert alive_after(processes, 10) == [], "a step outlived its pipeline"

    result = project.run("python", "main.py", *overrides)
    assert result.returncode == 0, result.output[-3000:]
    assert "FAILED whose process is gone" in result.stdout
    client = project.client()
    left = client.get_run(killed.info.run_id)
    assert left.info.status in ("FAILED", "KILLED") and STOPPED_TAG in left.data.tags
    pipeline_run = client.get_run(killed.data.tags["sheldon.pipeline_run_id"])
    assert (
        pipeline_run.info.status == "FAILED"
        and "ended without closing it" in pipeline_run.data.tags[STOPPED_TAG]
    )
    assert "sheldon.cache_key" not in left.data.tags  # so it can never stand in for the step
    assert not inputs_folder(killed.info.run_id).exists()  # nor what it had downloaded
    finished = project.step_runs("train_model")[-1]
    assert finished.info.run_id != killed.info.run_id and finished.info.status == "FINISHED"
    assert np.isfinite(finished.data.metrics["val_accuracy"])


@pytest.mark.slow  # ~30 s of training before the stop, after the shared full run
def test_ctrl_c_during_training_names_the_users_signal_once_and_how_to_resume_from_the_checkpoint(
    project, full_run
):
    """The step is stopped by its pipeline with SIGTERM: that is no news to the user, who pressed
    Ctrl-C. And train_model's checkpoint is kept, so `nothing of it was kept` would be wrong: the
    pipeline says how to continue from it instead (StepFacts.resume)."""
    overrides = [*SHRUNK.split(), "train_model.seed=7", "train_model.epochs=200", "train_model.patience=0"]
    proc = start_pipeline(project, overrides, output=subprocess.PIPE)
    before = set((project.root / "checkpoints").rglob("*"))
    deadline = time.time() + 180
    while time.time() < deadline and not set((project.root / "checkpoints").rglob("*.pt")) - before:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal's process group (the step has its own)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err.count("stopped by") == 1 and "stopped by SIGINT during train_model" in err, err[-3000:]
    assert "SIGTERM" not in err and "nothing of it was kept" not in err
    assert "its checkpoint is kept" in err
    resume = err.strip().splitlines()[-1].strip()
    assert (
        resume.startswith("mlflow run . --env-manager local -P steps=")
        and "train_model.resume=true" in resume
    )
