"""`make compare` (sheldon/engine/compare.py) and `make dag` (sheldon/engine/dag.py) on a real tracking
store: the session's pipeline, then a sweep of two learning rates (one trial is that pipeline's configuration,
reused whole; the other trains again), side by side; what is wrong with a request, in one line; the
same tables through a real `mlflow server`; and the pipeline's picture on its run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.http_server import free_port
from helpers.project import SHRUNK, STEPS, Project, parse_table, said

from sheldon.core.processes import stop_step
from sheldon.serving.server import server_command, wait_until


def compare(project: Project, *args: str) -> subprocess.CompletedProcess:
    return project.run("python", "-m", "sheldon.engine.compare", *args)


def table(output: str) -> list[dict[str, str]]:
    """The rows of the table a compare command printed (below its one-line title)."""
    return parse_table(output.split("\n\n")[1])


@pytest.fixture(scope="module")
def swept(project: Project, full_run) -> SimpleNamespace:
    """The session's project after a sweep of train_model.lr over 0.001 and config.yaml's 0.003:
    the sweep's run, its two pipeline runs by lr, and their step runs by step."""
    result = project.run("python", "main.py", "-m", "train_model.lr=0.001,0.003", *SHRUNK.split())
    assert result.returncode == 0, result.output[-4000:]
    (sweep,) = [r for r in project.runs() if "sheldon.sweep" in r.data.tags][-1:]
    trials = [r for r in project.runs() if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    pipelines = {r.data.params["train_model.lr"]: r for r in trials}
    steps = {lr: {s["step"]: s for s in lineage_of(project, run)["steps"]} for lr, run in pipelines.items()}
    return SimpleNamespace(sweep=sweep, pipelines=pipelines, steps=steps)


def lineage_of(project: Project, run) -> dict:
    """The lineage.json a pipeline run logged."""
    with tempfile.TemporaryDirectory() as folder:
        return json.loads(
            Path(project.client().download_artifacts(run.info.run_id, "lineage.json", folder)).read_text()
        )


def test_the_latest_pipelines_side_by_side_show_only_the_params_that_differ(project, swept):
    result = compare(project, "-n", "2")  # the sweep's two trials
    assert result.returncode == 0, result.output
    assert result.stdout.startswith("the latest 2 pipeline run(s), newest first\n")
    rows = table(result.stdout)
    columns = list(rows[0])
    metrics = ["evaluate.test_accuracy", "train_model.best_val_accuracy"]
    assert columns[:4] == ["run", "started", "status", "train_model.lr"]  # the one param that differs
    assert set(metrics) <= set(columns[4:]) and all("." in c for c in columns[4:])
    by_lr = {row["train_model.lr"]: row for row in rows}
    for lr, run in swept.pipelines.items():
        assert by_lr[lr]["run"] == run.info.run_id[:8] and by_lr[lr]["status"] == "finished"
        for metric in metrics:
            assert by_lr[lr][metric] == f"{run.data.metrics[metric]:.4f}"
    assert by_lr["0.001"]["evaluate.test_accuracy"] != by_lr["0.003"]["evaluate.test_accuracy"]


def test_a_sweep_side_by_side_by_its_name_its_run_id_or_as_the_latest(project, swept):
    latest = compare(project, "--sweep")
    assert latest.returncode == 0, latest.output
    name = swept.sweep.data.tags["sheldon.sweep"]
    assert latest.stdout.startswith(f"sweep {name!r} (run {swept.sweep.info.run_id[:8]}): 2 trial(s)")
    rows = table(latest.stdout)
    assert {(row["trial"], row["train_model.lr"]) for row in rows} == {("0", "0.001"), ("1", "0.003")}
    assert {row["run"] for row in rows} == {run.info.run_id[:8] for run in swept.pipelines.values()}
    assert compare(project, "--sweep", name).stdout == latest.stdout
    assert compare(project, "--sweep", swept.sweep.info.run_id[:8]).stdout == latest.stdout


def test_diff_shows_what_differs_step_by_step(project, swept):
    slow, fast = swept.pipelines["0.001"], swept.pipelines["0.003"]
    result = compare(project, "--diff", slow.info.run_id[:8], fast.info.run_id)
    assert result.returncode == 0, result.output
    a, b = slow.info.run_id[:8], fast.info.run_id[:8]
    assert result.stdout.startswith(f"pipeline runs {a} and {b}: what differs, step by step\n")
    rows = {(row["step"], row["what"]): (row[a], row[b]) for row in table(result.stdout)}
    trained = {lr: steps["train_model"] for lr, steps in swept.steps.items()}
    assert rows["train_model", "run"] == (
        f"{trained['0.001']['run_id'][:8]} (ran)",
        f"{trained['0.003']['run_id'][:8]} (cached)",  # the session's full run's, reused by the sweep
    )
    assert rows["train_model", "param lr"] == ("0.001", "0.003")
    best = [run.data.metrics["train_model.best_val_accuracy"] for run in (slow, fast)]
    assert rows["train_model", "metric best_val_accuracy"] == tuple(f"{value:.4f}" for value in best)
    assert ("evaluate", "metric test_accuracy") in rows and ("evaluate", "run") in rows
    assert not any(what == "param splits" for _, what in rows), "inputs name the runs above: left out"
    assert {step for step, _ in rows} == {"train_model", "evaluate"}
    shared = ", ".join(f"{s} {swept.steps['0.001'][s]['run_id'][:8]}" for s in STEPS[:2])
    assert result.stdout.rstrip().endswith(f"the same run in both: {shared}")


@pytest.mark.slow  # 15-30 s: the default suite keeps under 15 min
def test_bad_requests_are_one_line_each(project, swept, tmp_path):
    slow = swept.pipelines["0.001"].info.run_id
    train_run = swept.steps["0.001"]["train_model"]["run_id"]
    where = f"experiment 'sheldon' of {project.tracking_uri}"
    refusals = {
        ("--diff", slow, "0123abcd"): f"error: no run 0123abcd in {where}",
        ("--diff", slow, train_run): f"error: run {train_run} is a run of step train_model, not a pipeline "
        "run (make compare lists them)",
        ("--diff", slow, swept.sweep.info.run_id[:8]): f"error: run {swept.sweep.info.run_id[:8]} is the run "
        f"of sweep {swept.sweep.data.tags['sheldon.sweep']!r}, not a pipeline run (make compare lists them)",
        ("--diff", "last", slow): "error: 'last' is not a run id (4 to 32 characters of 0-9 and a-f)",
        ("--sweep", "sweep-nope"): f"error: no sweep 'sweep-nope' in {where}: name a sweep by its name or "
        "run id",
        ("--experiment", "Default"): "error: no pipeline runs in experiment 'Default' of "
        f"{project.tracking_uri}: run the pipeline first (make run)",
    }
    for args, refusal in refusals.items():
        result = compare(project, *args)
        assert (result.returncode, result.stdout, said(result.stderr)) == (1, "", [refusal]), args

    empty = dataclasses.replace(
        project, env=project.env | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/no.db"}
    )
    result = compare(empty)
    assert result.returncode == 1 and said(result.stderr) == [
        f"error: no tracking store at {tmp_path}/no.db: run the pipeline first (make run), or check "
        "MLFLOW_TRACKING_URI"
    ]
    assert not (tmp_path / "no.db").exists(), "looking made no store"
    nowhere = f"http://127.0.0.1:{free_port()}"
    gone = dataclasses.replace(project, env=project.env | {"MLFLOW_TRACKING_URI": nowhere})
    result = compare(gone)
    assert result.returncode == 1 and said(result.stderr) == [
        f"error: tracking server {nowhere} is unreachable (connection refused): start it, or check "
        "MLFLOW_TRACKING_URI"
    ]


@pytest.mark.slow  # an `mlflow server` starts: ~10-30 s
def test_the_same_tables_through_a_tracking_server(project, swept, tmp_path):
    port = free_port()
    db = project.tracking_uri  # the server serves the store the pipeline wrote
    server = subprocess.Popen(
        server_command(port, db, str(tmp_path / "artifacts")),
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("w"),
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: urllib.request.urlopen(f"{url}/health", timeout=2).close(), server, "mlflow server"
        )
        served = dataclasses.replace(project, env=project.env | {"MLFLOW_TRACKING_URI": url})
        slow, fast = (swept.pipelines[lr].info.run_id for lr in ("0.001", "0.003"))
        for args in [("-n", "2"), ("--sweep",), ("--diff", slow, fast)]:
            local, remote = compare(project, *args), compare(served, *args)
            assert remote.returncode == 0, remote.output
            assert remote.stdout == local.stdout
        refused = compare(served, "--diff", slow, "0123abcd")
        assert said(refused.stderr) == [f"error: no run 0123abcd in experiment 'sheldon' of {url}"]
    finally:
        stop_step(server.pid)


def test_the_pipeline_run_carries_its_picture(project, full_run):
    """Its description (Markdown the MLflow UI renders) and lineage.json hold the Mermaid text of
    the steps it ran, the same as `make dag` draws for them."""
    pipeline_id = full_run.stdout.split("pipeline run ")[-1].split()[0]
    run = project.client().get_run(pipeline_id)
    description = run.data.tags["mlflow.note.content"]
    assert description.startswith("```mermaid\nflowchart LR\n") and description.endswith("```\n")
    chart = description.removeprefix("```mermaid\n").removesuffix("```\n").strip()
    assert lineage_of(project, run)["dag"] == chart
    drawn = project.run("python", "-m", "sheldon.engine.dag")
    assert drawn.returncode == 0, drawn.output
    lines = drawn.stdout.splitlines()
    assert set(chart.splitlines()) <= set(lines)
    for line in [
        "    download_dataset --> download_dataset__raw_data",
        "    download_dataset__raw_data --> preprocess",
        "    preprocess__splits --> train_model",
        "    train_model__classifier -- model --> evaluate",
        "    preprocess__splits --> evaluate",
        "    test_model[test_model]:::on_request",  # main.py's step run only on request: dashed
    ]:
        assert line in lines
    assert "test_model" not in chart  # the full run did not run it
