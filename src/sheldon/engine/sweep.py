"""Sweeps: `python main.py -m train_model.lr=0.001,0.003` runs one pipeline per combination of
values (Hydra's multirun), each a trial. The sweep is an MLflow run, named after the sweep, whose
children are the trials' pipeline runs, whose children are the step runs. Trials reuse finished
steps from the step cache, so a sweep of train_model's settings downloads and preprocesses at
most once. When the sweep ends, a table of its trials, best first by `sweep.metric`, is printed
and logged to MLflow and W&B; it is read back from the tracking store, so it shows what is
recorded. A failed trial does not stop the sweep: the table marks it. A grid exits 1 then; an
Optuna search, which Optuna tells the trial failed, exits 1 only when no trial succeeded.

Hydra calls SweepCallback (config.yaml's hydra.callbacks) in the process that launches the
trials: it opens the sweep's run before the first trial and closes it after the last. Trials run
as Ray tasks (hydra/launcher=ray) get what they need of that process
(sheldon/engine/launchers/ray_cluster.py). `go` runs each trial and returns its objective, what
Hydra's Optuna sweeper maximizes."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import suppress
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sheldon.core.errors import StepError, first_line
from sheldon.core.output import prefix_output, set_verbose, text_table
from sheldon.core.processes import die_with, process_token, raise_on_signals
from sheldon.core.vocabulary import (
    ERROR_TAG,
    LINEAGE_FILE,
    PARENT_RUN_TAG,
    PROCESS_TAG,
    RAN_STEPS_TAG,
    REGISTERED_TAG,
    RUN_NAME_TAG,
    SWEEP_ENV,
    SWEEP_OVERRIDES_PARAM,
    SWEEP_PROCESS_ENV,
    SWEEP_TAG,
    SWEEP_TRIALS_ENV,
    TRIAL_NUMBER_TAG,
    TRIAL_TAG,
    runs_uri,
)
from sheldon.engine.launchers.ray_cluster import check_ray_cluster, prepare_tasks, runs_on_ray
from sheldon.engine.overrides import short_overrides, sweep_grid
from sheldon.engine.pipeline import share_step_template
from sheldon.engine.plan import Outcome, Trial

# hydra-optuna-sweeper 1.3.0, its latest release, builds Optuna's v2 distributions, which Optuna 4
# converts to their successors: the warning it gives names nothing a user of sheldon could change.
warnings.filterwarnings("ignore", message=r".*Distribution has been deprecated", category=FutureWarning)
# It logs a trial without a value (a failed one, `objective`) as "Return value must be
# float-castable. Got 'None'", and more failures than its max_failure_rate as an error, though it
# goes on (it stops only for a trial that raised): the pipeline said what failed, the table shows it.
logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl").setLevel(logging.CRITICAL)

JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
TABLE_FILE = "sweep_trials.txt"
TABLE_JSON = "sweep_trials.json"
_watching: list[str] = []  # a joblib worker: the launching process it watches, once watched


def current_trial() -> Trial | None:
    """The trial this Hydra job is, when it is one of a sweep whose run is open; else None. It
    says which it is (`trial 1 (2 of 4): train_model.lr=0.003`, numbered as the table numbers
    them); in a worker process, whose lines mix with the other trials', each line it and its
    steps print then starts with `[trial 1] `."""
    sweep = os.environ.get(SWEEP_ENV, "")
    if not sweep or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    run_id, _, name = sweep.partition(" ")
    hydra = HydraConfig.get()
    trial = Trial(
        sweep_run_id=run_id,
        sweep_name=name,
        overrides=" ".join(hydra.overrides.task),
        number=int(hydra.job.num),
    )
    total = os.environ.get(SWEEP_TRIALS_ENV)
    of_total = f" ({trial.number + 1} of {total})" if total else ""
    print(f"\ntrial {trial.number}{of_total}: {trial.overrides}", flush=True)
    launcher = os.environ.get(SWEEP_PROCESS_ENV, "")
    if launcher and launcher != process_token():  # a trial in a worker process (joblib, Ray)
        prefix_output(f"[trial {trial.number}] ")
        raise_on_signals()  # a stop signal stops it in order
        if hydra.launcher._target_ == JOBLIB_LAUNCHER and not _watching:
            # A worker outlives a launching process killed with -9 (idle, ~5 min): it stops too,
            # its trial first (its steps get 5 s each to unwind, then its runs are KILLED).
            die_with(launcher, f"the sweep that launched this trial ({launcher})", grace=20)
            _watching.append(launcher)
    return trial


def trial_count(config: DictConfig) -> int | None:
    """How many trials the sweep runs: every combination of a grid's values, or an Optuna search's
    n_trials; None for another sweeper."""
    sweeper = OmegaConf.select(config, "hydra.sweeper._target_")
    if sweeper == OPTUNA_SWEEPER:
        return int(config.hydra.sweeper.n_trials)
    if sweeper != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    overrides = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(overrides)
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


def objective(config: DictConfig, trial: Trial, outcome: Outcome) -> float | None:
    """The trial's value of `sweep.metric`, or None when it failed: the sweep goes on, and Optuna's
    sweeper, which cannot take a value from None (nor NaN), tells Optuna the trial failed. A stop
    signal ends the sweep; so does a metric that a finished pipeline did not log, which no trial
    would."""
    metric = str(config.sweep.metric)
    if outcome.code > 128:  # stopped by a signal: the sweep stops with it
        end_run(trial.sweep_run_id, "KILLED", f"stopped during trial {trial.overrides!r}")
        sys.exit(outcome.code)
    if outcome.code:
        if outcome.run_id is None:  # stopped before its pipeline run opened: the table must show it
            record_failed_trial(trial, outcome.error)
        return None
    if metric not in outcome.metrics:
        logged = ", ".join(sorted(outcome.metrics)) or "none"
        print(
            f"error: sweep.metric={metric!r} is not a metric of the pipeline runs (they log: {logged}): "
            "name one of those",
            file=sys.stderr,
        )
        end_run(trial.sweep_run_id, "FAILED", f"sweep.metric {metric!r} is not logged")
        sys.exit(1)
    return outcome.metrics[metric]


def record_failed_trial(trial: Trial, error: str) -> None:
    """A FAILED pipeline run under the sweep for a trial that failed before opening its own (a
    bad setting), so that the sweep's table, read from the store, counts it."""
    import mlflow

    client = mlflow.MlflowClient()
    sweep = client.get_run(trial.sweep_run_id)
    tags = {
        PARENT_RUN_TAG: trial.sweep_run_id,
        TRIAL_TAG: trial.overrides,
        TRIAL_NUMBER_TAG: str(trial.number),
        ERROR_TAG: error[:5000],
    }
    name = trial.run_name(sweep.data.params.get(SWEEP_OVERRIDES_PARAM, ""))
    run = client.create_run(sweep.info.experiment_id, run_name=name, tags=tags)
    client.set_terminated(run.info.run_id, "FAILED")


def open_sweep(config: DictConfig) -> None:
    """The sweep's MLflow run (the one `mlflow run .` opened, when it launched the sweep), for
    the trials of this process and of the processes it starts (SWEEP_ENV)."""
    import mlflow

    from sheldon.engine.launchers.runs import claim_launcher_run
    from sheldon.engine.runner import open_experiment
    from sheldon.step.store import check_tracking_store, tracking_environment
    from sheldon.step.tracking import configure_tracking

    check_tracking_store(tracking_environment())
    set_verbose(bool(config.main.verbose))  # before the trials' step template starts
    share_step_template(config)
    configure_tracking()
    name, overrides = str(config.sweep.name), list(config.hydra.overrides.task)
    experiment_id = open_experiment(str(config.main.experiment_name))
    client = mlflow.MlflowClient()
    run_name = " ".join([name, short_overrides(sweep_grid(overrides))]).strip()  # what it sweeps
    tags = {SWEEP_TAG: name, PROCESS_TAG: process_token(), RUN_NAME_TAG: run_name}
    if launcher := claim_launcher_run(experiment_id):
        for key, value in tags.items():
            client.set_tag(launcher, key, value)
        run_id = launcher
    else:
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    client.log_param(run_id, SWEEP_OVERRIDES_PARAM, " ".join(overrides)[:6000])
    os.environ[SWEEP_ENV] = f"{run_id} {name}"
    os.environ[SWEEP_PROCESS_ENV] = process_token()
    if (total := trial_count(config)) is not None:
        os.environ[SWEEP_TRIALS_ENV] = str(total)
    print(f"sweep {name!r}: MLflow run {run_id}; each trial is a pipeline run under it", flush=True)


def end_run(run_id: str, status: str, why: str) -> None:
    """End a run of the sweep (its own, or a trial's) that is still open, saying why."""
    from mlflow.entities import RunStatus

    from sheldon.engine.launchers.runs import end_run_if_running

    end_run_if_running(run_id, RunStatus.from_string(status), why)


def stop_sweep(stop: BaseException) -> None:
    """The process that launched a sweep's trials was stopped, and its trials, which ran in worker
    processes (Hydra's joblib launcher), with it: end the sweep's run and what its trials left
    open KILLED (their steps, which stop on their own when their pipeline is gone, may say so too)."""
    end_open_sweep("KILLED", str(stop), f"the sweep was {stop}")
    print(
        f"\nerror: {stop}: the sweep and its trials are stopped; the next sweep reuses the finished steps",
        file=sys.stderr,
    )


def end_open_sweep(status: str, why: str, why_trials: str) -> None:
    """End the sweep this process opened, if it has not closed, and every run under it still open
    (with Ray, a trial's worker that died leaves its runs open)."""
    sweep = os.environ.get(SWEEP_ENV, "")
    if not sweep:
        return
    import mlflow

    run_id = sweep.partition(" ")[0]
    with suppress(Exception):  # the store is gone too: the next pipeline marks the runs FAILED
        client = mlflow.MlflowClient()
        experiment = client.get_run(run_id).info.experiment_id
        parents = [run_id]
        while parents:
            children = client.search_runs(
                [experiment], f"tags.`{PARENT_RUN_TAG}` = '{parents.pop()}'", max_results=10000
            )
            parents += [child.info.run_id for child in children]
            for child in children:
                end_run(child.info.run_id, status, why_trials)
        end_run(run_id, status, why)


def trial_rows(config: DictConfig, run_id: str) -> list[dict[str, Any]]:
    """The sweep's trials as the tracking store has them, best first by `sweep.metric` (failed
    trials and trials without the metric last)."""
    import mlflow

    sweep = mlflow.get_run(run_id)
    metric, descending = str(config.sweep.metric), str(config.sweep.direction) == "maximize"
    pipelines = mlflow.MlflowClient().search_runs(
        [sweep.info.experiment_id],
        f"tags.`{PARENT_RUN_TAG}` = '{run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    rows = []
    for order, run in enumerate(pipelines):
        failed = run.info.status != "FINISHED"
        ran = run.data.tags.get(RAN_STEPS_TAG)
        rows.append(
            {
                "trial": int(run.data.tags.get(TRIAL_NUMBER_TAG, order)),
                "overrides": run.data.tags.get(TRIAL_TAG, ""),
                metric: run.data.metrics.get(metric),
                "status": "failed" if failed else f"ran {ran}" if ran else "cached",
                "pipeline_run_id": run.info.run_id,
            }
        )

    # Show what tells the trials apart: an override every trial has is said once, above the table.
    common = set.intersection(*(set(row["overrides"].split()) for row in rows)) if len(rows) > 1 else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"].split() if o not in common) or "-"

    def rank(row: dict[str, Any]) -> tuple[bool, float]:
        value = row[metric]
        missing = value is None or row["status"] == "failed"
        return missing, 0.0 if missing else (-value if descending else value)

    return sorted(rows, key=rank)


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    cells = [
        ["-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
        for row in rows
    ]
    return text_table([list(rows[0]), *cells])


def close_sweep(config: DictConfig) -> None:
    """Print and log the table of the sweep's trials, register the best trial's model, and end its
    run: FAILED, with exit code 1, when a trial of a grid failed or the registry refused the model.
    An Optuna search is after its best trial, and a failed one (a diverging lr) is among its
    outcomes, recorded as such in Optuna: it fails when no trial succeeded (Optuna's sweeper raises
    first, with no best trial to report, unless a stored study holds one; main.py ends the run
    then)."""
    import mlflow

    sweep = os.environ.pop(SWEEP_ENV, "")
    if not sweep:
        return
    run_id, _, name = sweep.partition(" ")
    rows = trial_rows(config, run_id)
    table = format_table(rows)
    client = mlflow.MlflowClient()
    client.log_text(run_id, table + "\n", TABLE_FILE)
    client.log_dict(run_id, {"metric": str(config.sweep.metric), "trials": rows}, TABLE_JSON)
    metric = str(config.sweep.metric)
    best = rows[0] if rows and rows[0][metric] is not None and rows[0]["status"] != "failed" else None
    if best:
        client.log_metric(run_id, f"best.{metric}", best[metric])
        client.set_tag(run_id, "sheldon.best_trial", best["overrides"])
    log_wandb_table(config, name, rows)
    failed = [row for row in rows if row["status"] == "failed"]
    print(f"\nsweep {name!r}: {len(rows)} trial(s), best first by {metric}\n\n{table}\n\nsweep run {run_id}")
    unregistered = ""
    if best:
        origin = f"the best of the {len(rows)} trials of sweep {name} by {metric} ({best['overrides']})"
        try:
            register_best_trial(run_id, best["pipeline_run_id"], origin)
        except StepError as err:
            unregistered = f"the best trial's model is not registered: {err}"
    search = OmegaConf.select(config, "hydra.sweeper._target_") == OPTUNA_SWEEPER
    fails = bool(failed) and (not search or len(failed) == len(rows)) or bool(unregistered)
    client.set_terminated(run_id, "FAILED" if fails else "FINISHED")
    if failed:
        said = f"{len(failed)} of {len(rows)} trial(s) failed: see the table"
        print(f"error: {said}" if fails else f"{said}; the search went on", file=sys.stderr)
    if unregistered:
        print(f"error: {unregistered}", file=sys.stderr)
    if fails:
        sys.exit(1)


def register_best_trial(sweep_run_id: str, pipeline_run_id: str, origin: str) -> None:
    """Register the model the best trial's evaluate scored, the sweep's one version (its trials
    registered none), unless it is registered already (a trial reused from an earlier sweep or
    pipeline) or the trials did not evaluate or register (steps, evaluate.registered_model_name)."""
    import mlflow

    from sheldon.serving.registration import register_evaluated

    steps = mlflow.artifacts.load_dict(runs_uri(pipeline_run_id, LINEAGE_FILE))["steps"]
    evaluated = next((s["run_id"] for s in steps if s["step"] == "evaluate" and s["run_id"]), None)
    if evaluated is None:
        return
    run = mlflow.get_run(evaluated)
    if not run.data.params.get("registered_model_name"):
        return
    if registered := run.data.tags.get(REGISTERED_TAG):
        print(f"registry: the best trial's model is registered already, as {registered}")
    else:
        decision = register_evaluated(evaluated, origin)
        registered = f"{decision.name}/{decision.version}"
        print(f"registry: {decision}")
    mlflow.MlflowClient().set_tag(sweep_run_id, REGISTERED_TAG, registered)


def log_wandb_table(config: DictConfig, name: str, rows: list[dict[str, Any]]) -> None:
    """The table as a W&B run of the sweep's group."""
    import wandb

    from sheldon.step.tracking import settle_wandb_mode

    mode = settle_wandb_mode()
    run = wandb.init(
        project=str(config.main.project_name),
        group=name,
        job_type="sweep",
        name=name,
        dir=os.environ.get("WANDB_DIR"),
        mode=mode,
        reinit="create_new",
    )
    columns = list(rows[0]) if rows else ["trial"]
    run.log({"trials": wandb.Table(columns=columns, data=[list(row.values()) for row in rows])})
    run.finish()


def fork_joblib_workers() -> None:
    """Have Hydra's joblib launcher fork its workers from one process that imported what a trial
    needs (this script, sheldon, mlflow, the tracking store's code), instead of starting each as
    a new interpreter that imports it all again while the sweep's template imports too: 2 workers,
    ~10 s less CPU and ~2 s less wall time a 6-trial sweep here. The launcher always uses loky,
    whose start method this sets; the fork server starts with the first worker, after the sweep's
    variables are set, so the workers have them."""
    import multiprocessing

    from joblib.externals.loky.backend.context import set_start_method

    from sheldon.engine.launchers.template import store_modules

    set_start_method("forkserver", force=True)
    multiprocessing.set_forkserver_preload(["__main__", "mlflow", "sheldon.engine.runner", *store_modules()])


class SweepCallback(Callback):
    """Hydra's hooks around a multirun: the sweep's run opens before the first trial and closes,
    with the table, after the last."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        on_ray = runs_on_ray(config)
        if on_ray:
            try:
                check_ray_cluster(config)
            except StepError as err:
                print(f"error: {err}", file=sys.stderr)
                from sheldon.engine.launchers.runs import discard_launcher_run  # MLflow: on this path only

                discard_launcher_run()
                sys.exit(1)
        try:
            open_sweep(config)
        except Exception as err:  # Hydra would print a warning and run the trials anyway
            print(f"error: cannot open the sweep's MLflow run: {first_line(err)}", file=sys.stderr)
            sys.exit(1)
        if OmegaConf.select(config, "hydra.launcher._target_") == JOBLIB_LAUNCHER:
            fork_joblib_workers()
        if on_ray:
            prepare_tasks(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        close_sweep(config)
