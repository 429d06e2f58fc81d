"""Pipeline runs side by side, from the terminal (make compare), read from the tracking store
(the repo's mlflow.db, or MLFLOW_TRACKING_URI: a team's server):

    python -m sheldon.engine.compare [-n 10]                # the latest pipeline runs, newest first
    python -m sheldon.engine.compare --sweep [NAME|RUN ID]  # one sweep's trials (no value: the latest sweep)
    python -m sheldon.engine.compare --diff RUN_A RUN_B     # what differs between two, step by step

A table shows only the parameters that differ between its runs (as config.yaml names them,
`train_model.lr`), then each step's headline metric (`evaluate.test_accuracy`). A run is named by
its id or the first characters of it, as the tables show them."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sheldon.core.errors import StepError, shorten
from sheldon.core.vocabulary import PARENT_RUN_TAG, PIPELINE_RUNS, STEP_TAG, SWEEP_TAG, TRIAL_NUMBER_TAG
from sheldon.engine.sweep import format_table
from sheldon.step.store import check_tracking_store, sqlite_file, tracking_environment

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run

SHORT = 8  # characters of a run id shown in a table
CELL = 40  # at most this many characters of a parameter's value in a cell
_RUN_ID = re.compile(r"[0-9a-f]{4,32}")


def open_experiment(name: str) -> Experiment:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        raise StepError(
            f"no experiment {name!r} in {mlflow.get_tracking_uri()}: run the pipeline first (make run)"
        )
    return experiment


def search(experiment: Experiment, query: str, limit: int = 10000, newest_first: bool = False) -> list[Run]:
    import mlflow

    order = "DESC" if newest_first else "ASC"
    return mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], query, order_by=[f"attributes.start_time {order}"], max_results=limit
    )


def where(experiment: Experiment) -> str:
    import mlflow

    return f"experiment {experiment.name!r} of {mlflow.get_tracking_uri()}"


def by_id(given: str) -> str:
    """The search for runs whose id is, or starts with, `given`."""
    if not _RUN_ID.fullmatch(given):
        raise StepError(f"{shorten(given)!r} is not a run id (4 to 32 characters of 0-9 and a-f)")
    return f"attributes.run_id LIKE '{given}%'"


def find_run(experiment: Experiment, given: str, kind: str = "run", also: str = "") -> Run:
    """The one run of `kind` (its runs match the search `also`) whose id is, or starts with, `given`."""
    runs = search(experiment, " and ".join(filter(None, [by_id(given), also])), 2)
    if not runs:
        raise StepError(f"no {kind} {given} in {where(experiment)}")
    if len(runs) > 1:
        raise StepError(
            f"{kind} id {given} is ambiguous (more than one run's id starts with it): give more of it"
        )
    return runs[0]


def find_pipeline(experiment: Experiment, given: str) -> Run:
    run = find_run(experiment, given)
    tags = run.data.tags
    if STEP_TAG in tags:
        what = f"a run of step {tags[STEP_TAG]}"
    elif SWEEP_TAG in tags:
        what = f"the run of sweep {tags[SWEEP_TAG]!r}"
    else:
        return run
    raise StepError(f"run {given} is {what}, not a pipeline run (make compare lists them)")


def find_sweep(experiment: Experiment, given: str) -> Run:
    """The sweep named `given` (the latest of that name), or whose run id starts with `given`; with
    `given` empty, the latest sweep."""
    any_sweep = f"tags.`{SWEEP_TAG}` LIKE '%'"
    if found := search(experiment, f"tags.`{SWEEP_TAG}` = '{given}'" if given else any_sweep, 1, True):
        return found[0]
    if not given:
        raise StepError(f"no sweeps in {where(experiment)}: run one (python main.py -m train_model.lr=...)")
    if _RUN_ID.fullmatch(given):
        return find_run(experiment, given, "sweep", any_sweep)
    raise StepError(f"no sweep {shorten(given)!r} in {where(experiment)}: name a sweep by its name or run id")


def cell(value: str | None) -> str | None:
    """A parameter as a table shows it: on one line, long values cut in the middle."""
    return None if value is None else shorten(value, CELL)


def number(value: float | None) -> float | int | None:
    """A metric as a table shows it: a count (bytes, samples) without decimals."""
    return int(value) if value is not None and float(value).is_integer() else value


def table(runs: list[Run], columns: dict[str, Any] | None = None) -> str:
    """One row per run: `columns`' values of it first, then the parameters that differ between the
    runs, then every headline metric any of them logged."""
    params = sorted({name for run in runs for name in run.data.params})
    differ = [n for n in params if len({run.data.params.get(n) for run in runs}) > 1]
    metrics = sorted({name for run in runs for name in run.data.metrics})
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run": run.info.run_id[:SHORT],
            "started": datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"),
            "status": run.info.status.lower(),
        }
        row |= {name: extract(run) for name, extract in (columns or {}).items()}
        row |= {name: cell(run.data.params.get(name)) for name in differ}
        row |= {name: number(run.data.metrics.get(name)) for name in metrics}
        rows.append(row)
    return format_table(rows)


def compare_latest(experiment: Experiment, count: int) -> str:
    """The `count` pipeline runs started last, newest first."""
    runs = search(experiment, PIPELINE_RUNS, count, newest_first=True)
    if not runs:
        raise StepError(f"no pipeline runs in {where(experiment)}: run the pipeline first (make run)")
    return f"the latest {len(runs)} pipeline run(s), newest first\n\n{table(runs)}"


def compare_sweep(experiment: Experiment, given: str) -> str:
    sweep = find_sweep(experiment, given)
    trials = search(experiment, f"tags.`{PARENT_RUN_TAG}` = '{sweep.info.run_id}'")
    name = sweep.data.tags[SWEEP_TAG]
    if not trials:
        raise StepError(f"sweep {name!r} (run {sweep.info.run_id[:SHORT]}) has no trials")
    shown = table(trials, {"trial": lambda run: run.data.tags.get(TRIAL_NUMBER_TAG)})
    return f"sweep {name!r} (run {sweep.info.run_id[:SHORT]}): {len(trials)} trial(s), in order\n\n{shown}"


def lineage(run: Run) -> dict[str, dict[str, Any]]:
    """The steps of a pipeline run, as its lineage.json lists them: {step: its entry}."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        manifest = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/lineage.json")
    except (MlflowException, OSError):
        raise StepError(
            f"pipeline run {run.info.run_id[:SHORT]} has no lineage.json (it was stopped before its "
            "steps were summed up): compare it in the runs table (make compare)"
        ) from None
    return {entry["step"]: entry for entry in manifest["steps"]}


def shown(entry: dict[str, Any]) -> str | None:
    """A step's run in a diff: its id and how the pipeline got it (ran, cached, pinned, failed)."""
    return f"{entry['run_id'][:SHORT]} ({entry['status']})" if entry.get("run_id") else None


def differences(entry_a: dict[str, Any], entry_b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, value in A, value in B) for each parameter and metric that differs between two runs
    of a step, given as their lineage.json entries. Input parameters are left out: they name the
    runs above, whose differences are shown there."""
    import mlflow

    found: list[tuple[str, Any, Any]] = []
    data = [mlflow.get_run(e["run_id"]).data if e.get("run_id") else None for e in (entry_a, entry_b)]
    inputs = {*entry_a.get("inputs", {}), *entry_b.get("inputs", {})}
    for kind in ("params", "metrics"):
        values_a, values_b = (getattr(d, kind) if d else {} for d in data)
        for name in sorted({*values_a, *values_b} - inputs):
            value_a, value_b = values_a.get(name), values_b.get(name)
            if value_a != value_b:
                shown_as = number if kind == "metrics" else cell
                value_a, value_b = shown_as(value_a), shown_as(value_b)
                found.append((f"{kind[:-1]} {name}", value_a, value_b))
    return found


def diff(experiment: Experiment, given_a: str, given_b: str) -> str:
    """What differs between two pipeline runs, step by step: each step's two runs, and the
    parameters and metrics that differ between them (a step both reused is the same run)."""
    a, b = find_pipeline(experiment, given_a), find_pipeline(experiment, given_b)
    steps_a, steps_b = lineage(a), lineage(b)
    name_a, name_b = a.info.run_id[:SHORT], b.info.run_id[:SHORT]
    rows, same = [], []
    for step in [*steps_a, *(s for s in steps_b if s not in steps_a)]:
        entry_a, entry_b = steps_a.get(step, {}), steps_b.get(step, {})
        if entry_a.get("run_id") and entry_a.get("run_id") == entry_b.get("run_id"):
            same.append(f"{step} {entry_a['run_id'][:SHORT]}")
            continue
        for what, value_a, value_b in [
            ("run", shown(entry_a), shown(entry_b)),
            *differences(entry_a, entry_b),
        ]:
            rows.append({"step": step, "what": what, name_a: value_a, name_b: value_b})
    header = f"pipeline runs {name_a} and {name_b}: what differs, step by step"
    body = format_table(rows) if rows else "(nothing differs: every step is the same run)"
    footer = f"\n\nthe same run in both: {', '.join(same)}" if same else ""
    return f"{header}\n\n{body}{footer}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sheldon.engine.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "-n", "--last", type=int, default=10, metavar="N", help="how many pipeline runs (default 10)"
    )
    parser.add_argument(
        "--sweep",
        nargs="?",
        const="",
        metavar="NAME|RUN_ID",
        help="one sweep's trials; no value: the latest sweep",
    )
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="what differs between two pipeline runs, step by step",
    )
    parser.add_argument("--experiment", default=None, help="default: config.yaml's main.experiment_name")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error(f"-n must be 1 or more, not {args.last}")
    try:
        uri = tracking_environment()
        check_tracking_store(uri)
        if (db := sqlite_file(uri)) and not db.exists():  # reading must not make an empty store
            raise StepError(
                f"no tracking store at {db}: run the pipeline first (make run), or check MLFLOW_TRACKING_URI"
            )
        import mlflow  # only now: an unusable store is refused without its ~2 s of imports

        from sheldon.step.tracking import configured

        mlflow.set_tracking_uri(uri)
        experiment = open_experiment(args.experiment or str(configured("main").get("experiment_name")))
        if args.diff:
            print(diff(experiment, *args.diff))
        elif args.sweep is not None:
            print(compare_sweep(experiment, args.sweep))
        else:
            print(compare_latest(experiment, args.last))
    except StepError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
