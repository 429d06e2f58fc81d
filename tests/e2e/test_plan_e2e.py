"""The plan (main.plan=true) on the real stack: what it says each step would do, and why, against
what the pipeline then does; and that a plan runs nothing and leaves no MLflow run."""

from __future__ import annotations

import re
import time

import pytest
from helpers.dvc import DATA_STEPS, add_data_version, project_with_dvc_remote
from helpers.project import SHRUNK, STEPS, make_project, parse_table, pipeline, ran
from mlflow.entities import ViewType


def store_runs(project, view: int = ViewType.ALL) -> int:
    """Every run of the project's store, in every experiment (deleted ones too, by default)."""
    client = project.client()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return len(client.search_runs(experiments, run_view_type=view, max_results=50000))


def rows(output: str) -> dict[str, tuple[str, str]]:
    """The plan's table: step -> (what it would do, the run id it reuses or why it runs)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("step "))
    end = lines.index("nothing was run (main.plan=true)")
    return {r["step"]: (r["would"], r["run id / why"]) for r in parse_table("\n".join(lines[start:end]))}


def plan(project, *overrides: str) -> dict[str, tuple[str, str]]:
    """`python main.py main.plan=true` with the shrunk config: its table, once it is checked that
    it made no run at all."""
    before = store_runs(project)
    result = project.run("python", "main.py", "main.plan=true", *SHRUNK.split(), *overrides)
    assert result.returncode == 0, result.output[-3000:]
    assert store_runs(project) == before
    assert "===" not in result.stdout  # no step launched, none reused
    return rows(result.stdout)


def why(run) -> str:
    return run.data.tags["sheldon.why"]


def test_an_unchanged_config_plans_all_cached_and_then_runs_nothing(project, full_run):
    pipeline(project)  # whatever ran before in this project, make the shrunk config cached
    planned = plan(project)
    assert [would for would, _ in planned.values()] == ["cached"] * 4 and list(planned) == STEPS
    result, new = pipeline(project)
    assert new == []
    reused = {
        line.split()[0]: line.split()[3]
        for line in result.stdout.splitlines()
        if line.split()[1:2] == ["cached"]
    }
    assert reused == {step: run_id for step, (_, run_id) in planned.items()}


def test_a_plan_through_mlflow_run_leaves_no_run(project, full_run):
    before = store_runs(project, ViewType.ACTIVE_ONLY)
    result = project.mlflow_run(hydra_options=f"{SHRUNK} main.plan=true train_model.lr=0.0123")
    assert result.returncode == 0, result.output[-3000:]
    planned = rows(result.stdout)
    assert planned["train_model"][0] == "run" and re.search(
        r"train_model\.lr: [\d.]+ -> 0\.0123", planned["train_model"][1]
    )
    assert planned["evaluate"][1].startswith("input from train_model, which runs")
    deadline = time.time() + 30  # `mlflow run`'s own run is deleted once it has exited
    while store_runs(project, ViewType.ACTIVE_ONLY) != before and time.time() < deadline:
        time.sleep(0.5)
    assert store_runs(project, ViewType.ACTIVE_ONLY) == before


def test_a_run_made_before_runs_recorded_their_keys_parts_is_said_to_be_so(project, full_run):
    pipeline(project)
    client = project.client()
    [latest] = client.search_runs(
        [client.get_experiment_by_name("sheldon").experiment_id],
        "tags.`sheldon.step` = 'train_model' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    record = latest.data.tags["sheldon.key_parts"]
    client.delete_tag(latest.info.run_id, "sheldon.key_parts")  # as a run of an earlier version has it
    try:
        planned = plan(project, "train_model.lr=0.0321")
    finally:
        client.set_tag(latest.info.run_id, "sheldon.key_parts", record)
    assert planned["train_model"] == ("run", "no record of its key (run before this version)")


def test_a_store_without_the_experiment_plans_every_step_as_never_ran(tmp_path):
    fresh = make_project(tmp_path)
    assert plan(fresh) == dict.fromkeys(STEPS, ("run", "never ran"))
    assert plan(fresh, "main.force=preprocess")["preprocess"] == ("run", "forced (main.force)")


def test_a_plan_with_a_sweep_is_refused_in_one_line(project, full_run):
    before = store_runs(project)
    result = project.run("python", "main.py", "-m", "main.plan=true", "train_model.lr=0.001,0.003")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: main.plan=true cannot plan a sweep (-m): ")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert store_runs(project) == before


@pytest.mark.slow
def test_each_kind_of_change_is_planned_as_the_pipeline_then_runs_it(tmp_path):
    fresh = make_project(tmp_path)
    first, _ = pipeline(fresh)
    assert first.returncode == 0, first.output[-3000:]

    # a parameter and a line of evaluate's code: train_model and evaluate run, and say why
    script = fresh.root / "src" / "evaluate" / "run.py"
    script.write_text(script.read_text().replace("score the trained model", "score the model trained", 1))
    planned = plan(fresh, "train_model.lr=0.01")
    assert planned["download_dataset"][0] == planned["preprocess"][0] == "cached"
    assert planned["train_model"] == ("run", "train_model.lr: 0.003 -> 0.01")
    assert planned["evaluate"] == ("run", "input from train_model, which runs; src/evaluate/run.py changed")
    result, new = pipeline(fresh, "train_model.lr=0.01")
    assert ran(new) == ["train_model", "evaluate"], result.output[-3000:]
    assert why(new[0]) == "train_model.lr: 0.003 -> 0.01"
    model = f"new input: model <- train_model run {new[0].info.run_id[:8]} (ran in this pipeline)"
    assert why(new[1]) == f"{model}; src/evaluate/run.py changed"
    assert f"  why: {why(new[1])}" in result.stdout

    # an upstream input: preprocess runs, and the steps after it take its new splits
    planned = plan(fresh, "train_model.lr=0.01", "preprocess.seed=3")
    assert planned["preprocess"] == ("run", "preprocess.seed: 42 -> 3")
    assert planned["train_model"] == ("run", "input from preprocess, which runs")
    assert planned["evaluate"] == (
        "run",
        "input from preprocess, which runs; input from train_model, which runs",
    )
    result, new = pipeline(fresh, "train_model.lr=0.01", "preprocess.seed=3")
    assert ran(new) == ["preprocess", "train_model", "evaluate"], result.output[-3000:]
    assert (
        why(new[1]) == f"new input: splits <- preprocess run {new[0].info.run_id[:8]} (ran in this pipeline)"
    )

    # forced, and what follows it
    planned = plan(fresh, "train_model.lr=0.01", "preprocess.seed=3", "main.force=train_model")
    assert planned["preprocess"][0] == "cached"
    assert planned["train_model"] == ("run", "forced (main.force)")
    assert planned["evaluate"] == ("run", "input from train_model, which runs")
    result, new = pipeline(fresh, "train_model.lr=0.01", "preprocess.seed=3", "main.force=train_model")
    assert ran(new) == ["train_model", "evaluate"], result.output[-3000:]
    assert [why(run) for run in new] == ["forced (main.force)", "input from train_model, which runs"]

    # back to the first config: its runs are reused up to evaluate, whose code is still edited;
    # it is compared with its latest run, the forced one, which read other inputs
    planned = plan(fresh)
    assert [would for would, _ in planned.values()] == ["cached", "cached", "cached", "run"]
    model, splits = planned["train_model"][1][:8], planned["preprocess"][1][:8]
    assert planned["evaluate"][1] == (
        f"new input: model <- train_model run {model} (cached, same config); "
        f"new input: splits <- preprocess run {splits} (cached, same config)"
    )


@pytest.mark.slow
def test_a_new_data_pin_is_planned_as_the_pipeline_then_runs_it(tmp_path):
    fresh, _ = project_with_dvc_remote(tmp_path)
    add_data_version(fresh, tmp_path)  # data.dvc now pins the new version

    planned = plan(fresh, DATA_STEPS)
    # compared with the run of the version before: the fresh download is never reused
    assert planned["download_dataset"] == ("run", "data.dvc changed")
    assert planned["preprocess"] == ("run", "input from download_dataset, which runs")
    result, new = pipeline(fresh, DATA_STEPS)
    assert ran(new) == ["download_dataset", "preprocess"], result.output[-3000:]
    assert why(new[0]) == "data.dvc changed"
