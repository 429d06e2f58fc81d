"""Sweeps with the real Hydra multirun, in a temporary copy of the repo on the shrunk config (one
epoch): the step cache across trials, the three levels of runs, the table, and what goes wrong."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from helpers.http_server import free_port
from helpers.project import make_project, parse_table, summary_status, wandb_records

from sheldon.step.artifacts import inputs_folder

SHRUNK = ["train_model.epochs=1", "evaluate.min_accuracy=0.5"]
GRID = ["train_model.lr=0.001,0.003", "train_model.batch_size=32,64"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A copy of the repo after a 2x2 sweep of train_model's lr and batch size."""
    project = make_project(tmp_path_factory.mktemp("sweep"))
    result = project.run("python", "main.py", "-m", *GRID, *SHRUNK)
    assert result.returncode == 0, result.output[-4000:]
    return project, result


def sweep_runs(project) -> list:
    return [r for r in project.runs() if "sheldon.sweep" in r.data.tags]


def table_rows(output: str) -> list[dict[str, str]]:
    """The rows of the last sweep table printed: trial, overrides, the metric, status, pipeline_run_id."""
    return parse_table(output[output.rindex("best first by") :].split("\n\n")[1])


def test_a_grid_runs_a_pipeline_per_combination_reusing_the_upstream_steps(swept):
    project, result = swept
    assert len(project.step_runs("download_dataset")) == len(project.step_runs("preprocess")) == 1
    assert len(project.step_runs("train_model")) == len(project.step_runs("evaluate")) == 4
    rows = table_rows(result.stdout)
    assert sorted(row["overrides"] for row in rows) == [
        "train_model.lr=0.001 train_model.batch_size=32",
        "train_model.lr=0.001 train_model.batch_size=64",
        "train_model.lr=0.003 train_model.batch_size=32",
        "train_model.lr=0.003 train_model.batch_size=64",
    ]
    values = [float(row["train_model.best_val_accuracy"]) for row in rows]
    assert values == sorted(values, reverse=True)  # best first by best validation accuracy
    assert "train_model.epochs=1" not in rows[0]["overrides"]  # said once, not on every row


def test_each_trial_is_announced_by_its_number_in_the_table_and_how_far_the_sweep_is(swept):
    _, result = swept
    announced = re.findall(r"^trial (\d) \((\d) of 4\): (.*)$", result.stdout, re.M)
    assert [(number, done) for number, done, _ in announced] == [
        ("0", "1"),
        ("1", "2"),
        ("2", "3"),
        ("3", "4"),
    ]
    rows = {row["trial"]: row["overrides"] for row in table_rows(result.stdout)}
    for number, _, overrides in announced:
        assert set(rows[number].split()) <= set(overrides.split())  # the table's trial of that number
    assert "[trial" not in result.stdout  # one trial at a time: nothing to tell apart


def test_a_sweep_is_a_run_whose_children_are_pipelines_whose_children_are_steps(swept):
    project, result = swept
    (sweep,) = sweep_runs(project)
    assert sweep.info.status == "FINISHED"
    assert sweep.info.run_name == f"{sweep.data.tags['sheldon.sweep']} lr=0.001,0.003 batch_size=32,64"
    pipelines = [r for r in project.runs() if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sorted(r.info.run_name for r in pipelines) == [  # what tells the trials apart
        "pipeline lr=0.001 batch_size=32",
        "pipeline lr=0.001 batch_size=64",
        "pipeline lr=0.003 batch_size=32",
        "pipeline lr=0.003 batch_size=64",
    ]
    for pipeline in pipelines:
        trial = dict(o.split("=") for o in pipeline.data.tags["sheldon.trial"].split())
        assert pipeline.data.params["train_model.lr"] == trial["train_model.lr"]
        assert pipeline.data.params["train_model.batch_size"] == trial["train_model.batch_size"]
        children = [
            r for r in project.step_runs() if r.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
        ]
        assert {r.data.tags["sheldon.step"] for r in children} <= {
            "train_model",
            "evaluate",
            "download_dataset",
            "preprocess",
        }
        assert "train_model.best_val_accuracy" in pipeline.data.metrics
    best = max(p.data.metrics["train_model.best_val_accuracy"] for p in pipelines)
    assert sweep.data.metrics["best.train_model.best_val_accuracy"] == best
    logged = project.client().download_artifacts(sweep.info.run_id, "sweep_trials.json")
    trials = json.loads(Path(logged).read_text())["trials"]
    assert [t["pipeline_run_id"] for t in trials] == [
        row["pipeline_run_id"] for row in table_rows(result.stdout)
    ]


def test_the_trials_step_runs_share_the_sweeps_wandb_group_and_carry_its_overrides(swept):
    project, _ = swept
    (sweep,) = sweep_runs(project)
    seen = []
    for run_dir in project.wandb_runs():
        for record in wandb_records(run_dir):
            if record.HasField("run"):
                config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
                seen.append((record.run.run_group, record.run.job_type, config))
    assert {group for group, _, _ in seen} == {sweep.data.tags["sheldon.sweep"]}
    trained = [config for _, job, config in seen if job == "train_model"]
    assert len(trained) == 4 and all("train_model.lr=" in config["trial"] for config in trained)
    assert [job for _, job, _ in seen].count("sweep") == 1  # the table, as a W&B run of the group


def test_a_sweep_registers_its_best_trials_model_alone(swept):
    project, result = swept
    (sweep,) = sweep_runs(project)
    [version] = project.client().search_model_versions("name = 'sheldon-classifier'")
    best = table_rows(result.stdout)[0]
    evaluated = {r.data.tags["mlflow.parentRunId"]: r for r in project.step_runs("evaluate")}
    assert version.tags["sheldon.evaluate_run"] == evaluated[best["pipeline_run_id"]].info.run_id
    assert sweep.data.tags["sheldon.registered_version"] == "sheldon-classifier/1"
    assert "registry: sheldon-classifier v1: champion, the first: " in result.stdout
    name = sweep.data.tags["sheldon.sweep"]
    origin = f"the best of the 4 trials of sweep {name} by train_model.best_val_accuracy ("
    assert origin in version.description
    others = [run for pipeline, run in evaluated.items() if pipeline != best["pipeline_run_id"]]
    assert {run.data.tags["sheldon.note"] for run in others} == {
        "not registered: a sweep trial (the sweep registers its best trial when it ends)"
    }


def test_a_sweep_run_again_is_all_cached(swept):
    project, _ = swept
    result = project.run("python", "main.py", "-m", *GRID, *SHRUNK)
    assert result.returncode == 0, result.output[-3000:]
    rows = table_rows(result.stdout)
    assert {row["status"] for row in rows} == {"cached"}
    assert len(project.step_runs("train_model")) == 4
    assert "the best trial's model is registered already, as sheldon-classifier/1" in result.stdout
    assert len(project.client().search_model_versions("name = 'sheldon-classifier'")) == 1
    names = {project.client().get_run(row["pipeline_run_id"]).info.run_name for row in rows}
    assert "pipeline lr=0.001 batch_size=32 (all cached)" in names and len(names) == 4


@pytest.mark.slow  # a sweep of its own; the default suite keeps the grid's
def test_a_failing_trial_is_marked_and_the_sweep_goes_on_then_exits_1(swept):
    project, _ = swept
    result = project.run(
        "python", "main.py", "-m", "train_model.lr=0.003", "train_model.batch_size=64",
        "train_model.epochs=1", "evaluate.min_accuracy=0.99,0.5",
    )  # fmt: skip
    assert result.returncode == 1, result.output[-3000:]
    rows = table_rows(result.stdout)
    assert [row["overrides"] for row in rows] == ["evaluate.min_accuracy=0.5", "evaluate.min_accuracy=0.99"]
    assert [row["status"] for row in rows] == ["cached", "failed"]  # a failed trial ranks last
    assert "error: 1 of 2 trial(s) failed: see the table" in result.stderr
    assert sweep_runs(project)[-1].info.status == "FAILED"


@pytest.mark.slow  # a sweep of its own; the default suite keeps the grid's
def test_a_trial_refused_before_its_pipeline_opens_is_in_the_table_as_failed(swept):
    project, _ = swept
    args = ["-m", "train_model.lr=0.003", "train_model.batch_size=64", "evaluate.min_accuracy=0.5,7"]
    result = project.run("python", "main.py", *args, "train_model.epochs=1")
    assert result.returncode == 1, result.output[-3000:]
    rows = table_rows(result.stdout)
    assert [(row["overrides"], row["status"]) for row in rows] == [
        ("evaluate.min_accuracy=0.5", "cached"),
        ("evaluate.min_accuracy=7", "failed"),
    ]
    (sweep,) = sweep_runs(project)[-1:]
    (failed,) = [r for r in project.runs() if r.info.run_id == rows[1]["pipeline_run_id"]]
    assert failed.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    assert "evaluate.min_accuracy" in failed.data.tags["sheldon.error"]


@pytest.mark.slow  # a minute of trials
def test_an_optuna_search_with_a_seed_proposes_the_same_trials_again_and_gets_each_trials_metric(swept):
    project, _ = swept
    search = ["-m", "hparams_search=optuna", "sweep.n_trials=3", "sweep.seed=7", *SHRUNK]
    first = project.run("python", "main.py", *search)
    assert first.returncode == 0, first.output[-3000:]
    assert "FutureWarning" not in first.stderr
    again = project.run("python", "main.py", *search)
    assert again.returncode == 0, again.output[-3000:]
    proposed = [sorted(row["overrides"] for row in table_rows(run.stdout)) for run in (first, again)]
    assert proposed[0] == proposed[1] and len(set(proposed[0])) == 3
    assert {row["status"] for row in table_rows(again.stdout)} == {"cached"}
    # Optuna was told each trial's value: its best is the table's first row
    results = sorted(project.root.glob("multirun/*/*/optimization_results.yaml"))[-1]
    best = float(table_rows(again.stdout)[0]["train_model.best_val_accuracy"])
    assert yaml.safe_load(results.read_text())["best_value"] == pytest.approx(best, abs=1e-4)


@pytest.mark.slow  # a sweep of its own; the default suite keeps the grid's
def test_an_optuna_trial_that_fails_is_failed_in_optuna_and_mlflow_and_the_search_goes_on(swept):
    import optuna

    project, _ = swept
    storage = f"sqlite:///{project.home / 'optuna.db'}"  # the study kept, to read what Optuna was told
    search = ["-m", "hparams_search=optuna", "sweep.n_trials=3", "sweep.name=search-with-a-failure"]
    space = ["train_model.lr=choice(0.003,5)", "train_model.batch_size=64"]
    space.append(f"hydra.sweeper.storage={storage}")
    result = project.run("python", "main.py", *search, *space, *SHRUNK)  # seed 42 proposes 5, 0.003, 0.003
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output
    assert "1 of 3 trial(s) failed: see the table; the search went on" in result.stderr
    rows = table_rows(result.stdout)
    assert [(row["trial"], row["overrides"], row["status"]) for row in rows] == [
        ("1", "train_model.lr=0.003", "cached"),  # the grid's run
        ("2", "train_model.lr=0.003", "cached"),
        ("0", "train_model.lr=5", "failed"),  # diverged: evaluate's accuracy is under min_accuracy
    ]
    (sweep,) = sweep_runs(project)[-1:]
    assert sweep.info.status == "FINISHED"
    statuses = {r.info.run_id: r.info.status for r in project.runs()}
    assert [statuses[row["pipeline_run_id"]] for row in rows] == ["FINISHED", "FINISHED", "FAILED"]
    study = optuna.load_study(study_name="search-with-a-failure", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.best_value == pytest.approx(float(rows[0]["train_model.best_val_accuracy"]), abs=1e-4)


@pytest.mark.slow  # a sweep of its own; the default suite keeps the grid's
def test_an_objective_metric_no_pipeline_logs_stops_the_sweep_naming_those_it_logs(swept):
    project, _ = swept
    args = [
        "-m",
        "train_model.lr=0.001,0.003",
        "train_model.batch_size=32",
        "sweep.metric=train_model.nosuch",
    ]
    result = project.run("python", "main.py", *args, *SHRUNK)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [
        "error: sweep.metric='train_model.nosuch' is not a metric of the pipeline runs (they log: "
        "download_dataset.bytes, evaluate.test_accuracy, preprocess.n_train, train_model.best_val_accuracy): "
        "name one of those"
    ]
    assert len(re.findall(r"^pipeline run [0-9a-f]{32}", result.stdout, re.M)) == 1  # after one trial
    assert sweep_runs(project)[-1].info.status == "FAILED"


@pytest.mark.slow  # two trials of DistributedDataParallel on CPU
def test_a_sweep_of_distributed_training_gives_one_model_per_trial(swept):
    project, _ = swept
    args = ["-m", "train_model.nproc_per_node=2", "train_model.lr=0.002,0.004", "train_model.batch_size=64"]
    result = project.run("python", "main.py", *args, *SHRUNK, timeout=900)
    assert result.returncode == 0, result.output[-3000:]
    rows = table_rows(result.stdout)
    assert [row["status"] for row in rows] == ["ran train_model,evaluate"] * 2
    for row in rows:
        (train,) = [
            r
            for r in project.step_runs("train_model")
            if r.data.tags["mlflow.parentRunId"] == row["pipeline_run_id"]
        ]
        assert train.data.params["nproc_per_node"] == "2"
        models = project.client().search_logged_models([train.info.experiment_id])
        assert [m.source_run_id for m in models].count(train.info.run_id) == 1


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    """A fresh copy of the repo after a sweep of two trials run at once (joblib, 2 workers)."""
    project = make_project(tmp_path_factory.mktemp("parallel"))
    result = project.run("python", "main.py", "-m", *JOBLIB, "train_model.lr=0.001,0.003", *SHRUNK)
    assert result.returncode == 0, result.output[-4000:]
    return project, result


JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


@pytest.mark.slow  # a minute of trials
def test_trials_run_at_once_share_the_upstream_steps_and_match_a_sequential_sweep(parallel, swept):
    project, result = parallel
    assert len(project.step_runs("download_dataset")) == len(project.step_runs("preprocess")) == 1
    assert "waiting to reuse it" in result.stdout  # the second trial waited for the first's upstream
    at_once = {row["overrides"]: row["train_model.best_val_accuracy"] for row in table_rows(result.stdout)}
    one_by_one = {
        row["overrides"].split()[0]: row["train_model.best_val_accuracy"]
        for row in table_rows(swept[1].stdout)
        if row["overrides"].endswith("batch_size=64")
    }
    assert at_once == one_by_one  # same trials, same results
    # Their lines mix: each starts with its trial, the steps' too (a warning, an error)
    assert sorted(re.findall(r"^trial (\d) \(\d of 2\): ", result.stdout, re.M)) == ["0", "1"]
    for number in "01":
        mine = [line for line in result.stdout.splitlines() if line.startswith(f"[trial {number}] ")]
        assert mine[0].startswith(f"[trial {number}] pipeline: download_dataset -> ")
        assert any(re.match(rf"\[trial {number}\] train_model +ran +\d", line) for line in mine), mine
        assert mine[-1].startswith(f"[trial {number}] pipeline run ")


@pytest.mark.slow  # a minute of trials
def test_ctrl_c_during_a_parallel_sweep_stops_every_trial_and_leaves_nothing_running(parallel):
    project, _ = parallel
    args = ["python", "main.py", "-m", *JOBLIB, "train_model.lr=0.002,0.004", "train_model.epochs=4"]
    sweep = subprocess.Popen(
        args, cwd=project.root, env=project.env, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(training(sweep.pid)) < 2:
        time.sleep(0.3)
    processes = psutil.Process(sweep.pid).children(recursive=True)
    assert len(training(sweep.pid)) == 2  # both trials train at once
    os.killpg(sweep.pid, signal.SIGINT)
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 130
    assert "Traceback" not in err and "the sweep and its trials are stopped" in err
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    assert [r.info.run_name for r in project.runs() if r.info.status == "RUNNING"] == []
    assert sweep_runs(project)[-1].info.status == "KILLED"
    assert not [r for r in project.step_runs() if inputs_folder(r.info.run_id).exists()]  # nor downloads
    again = project.run("python", "main.py", "-m", "train_model.lr=0.002", *SHRUNK)
    assert summary_status(again.stdout)["preprocess"] == "cached"  # the next sweep reuses what finished


@pytest.mark.slow  # a minute of trials
def test_kill_9_of_a_parallel_sweep_stops_its_workers_and_their_trials(parallel, tmp_path):
    project, _ = parallel
    trials = ["train_model.lr=0.005,0.006", "train_model.epochs=30", "train_model.patience=0"]  # ~40 s each
    before = len(project.step_runs("train_model"))
    with open(tmp_path / "err", "w") as err:
        sweep = subprocess.Popen(
            ["python", "main.py", "-m", *JOBLIB, *trials], cwd=project.root, env=project.env,
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline and len(project.step_runs("train_model")) < before + 2:
            time.sleep(0.5)  # both trials' train_model runs are open: their steps are launched
        time.sleep(2)
        processes = psutil.Process(sweep.pid).children(recursive=True)  # workers, template, steps
        assert len(training(sweep.pid)) == 2
        sweep.kill()  # the launching process alone, as kill -9 <pid> does
        sweep.wait()
        _, alive = psutil.wait_procs(processes, timeout=30)
    assert [p.cmdline() for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    said = (tmp_path / "err").read_text()
    assert "the sweep that launched this trial" in said
    assert [r.info.run_name for r in project.runs() if r.info.status == "RUNNING"] == [], said[-3000:]
    assert [r.info.status for r in project.step_runs("train_model")[before:]] == ["KILLED", "KILLED"]
    assert sweep_runs(project)[-1].info.status == "KILLED"
    again = project.run("python", "main.py", "-m", "train_model.lr=0.002", *SHRUNK)
    assert summary_status(again.stdout)["preprocess"] == "cached"  # the next sweep reuses what finished


def training(pid: int) -> list[psutil.Process]:
    """The train_model steps running under a process."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.cwd().endswith("train_model") and "sheldon.engine.launchers.template" in child.cmdline():
                found.append(child)
    return found


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["-m", "train_model.lr=0.1,"], "malformed override 'train_model.lr=0.1,'"),
        (["train_model.lr=0.1,0.2"], "gives several values, a sweep: add -m"),
        (["-m", "train_model.typo=1,2"], "train_model.typo"),
        (["-m", "train_model.lr=interval(0.1,0.01)"], "an interval's start must be below its end"),
        (["-m", "hydra/sweeper=nosuch"], "hydra/sweeper"),
        (["-m", "hydra/launcher=nosuch"], "hydra/launcher"),
    ],
    ids=["malformed", "no-multirun", "unknown-key", "bad-interval", "unknown-sweeper", "unknown-launcher"],
)
def test_a_bad_sweep_is_refused_before_anything_runs(swept, args, complaint):
    project, _ = swept
    before = len(project.runs())
    result = project.run("python", "main.py", *args, *SHRUNK)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and complaint in lines[0], result.stderr
    assert len(project.runs()) == before
    assert not re.search(r"Traceback", result.output)


def test_a_ray_cluster_that_is_not_there_stops_the_sweep_in_seconds_naming_its_address(swept):
    project, _ = swept
    before = len(project.runs())
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    ray = ["-m", "hydra/launcher=ray", "train_model.lr=0.1,0.2"]
    result = project.run("env", f"RAY_ADDRESS={address}", "python", "main.py", *ray)
    assert time.monotonic() - started < 20  # a start of main.py; Ray would retry its connection for minutes
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"error: Ray cluster {address} is unreachable (connection refused): start it (ray start --head), "
        "or check RAY_ADDRESS or hydra.launcher.ray.init.address"
    ]
    assert len(project.runs()) == before


# Ray on 127.0.0.1 alone: without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its head and its drivers
# take this machine's network address for 127.0.0.1, which the head does not listen on.
ONE_MACHINE_RAY = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextlib.contextmanager
def ray_head(cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs, started in `cwd` (its workers' folder) with `env`; its
    address. Its processes, workers included, are ended on the way out."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray-")  # short: Ray's sockets live under it
    head = subprocess.Popen(
        [
            "ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats",
            "--object-store-memory", str(80 * 2**20), "--temp-dir", temp,
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
        ],
        cwd=cwd, env=env | ONE_MACHINE_RAY, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and head.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        processes = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(processes, timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # a Ray head, and two sweeps of two trials at once
def test_a_sweeps_trials_run_as_ray_tasks_report_to_its_store_and_stop_with_it(tmp_path):
    project = make_project(tmp_path)
    project.env |= ONE_MACHINE_RAY
    # The head knows nothing of the tracking store or W&B: the trials get them from the sweep.
    bare = {k: v for k, v in project.env.items() if not k.startswith(("MLFLOW_", "WANDB_"))}
    with ray_head(project.root, bare) as address:
        args = ["python", "main.py", "-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}"]
        result = project.run(*args, "train_model.lr=0.001,0.003", *SHRUNK, timeout=300)
        stopped = ctrl_c_when_both_train(
            project, [*args, "train_model.lr=0.002,0.004", "train_model.epochs=6"]
        )
    assert result.returncode == 0, result.output[-4000:]
    sweep = sweep_runs(project)[0]
    rows = table_rows(result.stdout)
    assert sorted(row["overrides"] for row in rows) == ["train_model.lr=0.001", "train_model.lr=0.003"]
    pipelines = {
        r.info.run_id: r for r in project.runs() if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id
    }
    assert set(pipelines) == {row["pipeline_run_id"] for row in rows}
    for row in rows:
        steps = [
            r for r in project.step_runs() if r.data.tags["mlflow.parentRunId"] == row["pipeline_run_id"]
        ]
        assert "train_model" in {r.data.tags["sheldon.step"] for r in steps}
        assert float(row["train_model.best_val_accuracy"]) > 0.5
    assert len(project.step_runs("download_dataset")) == 1  # one trial waited for the other's
    assert sweep.info.status == "FINISHED"
    groups = {
        (record.run.run_group, record.run.job_type)
        for run_dir in project.wandb_runs()
        for record in wandb_records(run_dir)
        if record.HasField("run")
    }
    assert (sweep.data.tags["sheldon.sweep"], "train_model") in groups

    # Ctrl-C: the sweep, its trials' pipelines and their steps end KILLED, and no step is left
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "the sweep and its trials are stopped" in stopped.stderr and "Traceback" not in stopped.stderr
    assert [r.info.run_name for r in project.runs() if r.info.status == "RUNNING"] == []
    assert sweep_runs(project)[-1].info.status == "KILLED"
    deadline = time.monotonic() + 30
    while steps_running(project.root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert steps_running(project.root) == []


def ctrl_c_when_both_train(project, args: list[str]) -> subprocess.CompletedProcess:
    """Start a sweep of two trials, and Ctrl-C it once both train (their runs are open)."""
    sweep = subprocess.Popen(
        args, cwd=project.root, env=project.env, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sweep.poll() is None:
        if len([r for r in project.step_runs("train_model") if r.info.status == "RUNNING"]) == 2:
            break
        time.sleep(0.5)
    os.killpg(sweep.pid, signal.SIGINT)
    out, err = sweep.communicate(timeout=60)
    return subprocess.CompletedProcess(args, sweep.returncode, out, err)


def steps_running(root: Path) -> list[psutil.Process]:
    """The step processes working in this copy of the repo (a Ray worker's are not the sweep's children)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.cwd().startswith(str(root / "src")):
                found.append(process)
    return found
