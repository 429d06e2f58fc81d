"""Run or reuse each planned step, in order, under one pipeline run: its inputs and cache key
(sheldon/engine/upstream.py), its cached run or its launch, and what happened and what to do next."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run, RunStatus
from omegaconf import DictConfig, OmegaConf

from sheldon.core.errors import StepError
from sheldon.core.locks import machine_lock
from sheldon.core.output import is_verbose
from sheldon.core.paths import repo_path
from sheldon.core.processes import PIPELINE_ENV, Interrupted
from sheldon.core.vocabulary import (
    ALL_CACHED_TAG,
    CHECKPOINTS_TAG,
    DIGEST_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND_TAG,
    FAILED_STEP_TAG,
    INPUT_DIGEST_TAG,
    INPUT_SOURCE_TAG,
    KEY_PARTS_TAG,
    KEY_TAG,
    PINNED_TAG,
    PIPELINE_RUN_TAG,
    PROCESS_TAG,
    RAN_STEPS_TAG,
    RUN_NAME_TAG,
    STOPPED_TAG,
    SWEEP_OVERRIDES_PARAM,
    TRIAL_NUMBER_TAG,
    TRIAL_TAG,
    WHY_TAG,
)
from sheldon.engine.backends import Backend
from sheldon.engine.cache import (
    find_cached_run,
    why_not_cached,
)
from sheldon.engine.launchers.local import start_local
from sheldon.engine.launchers.prestart import Prestarted
from sheldon.engine.launchers.runs import claim_launcher_run, fail_dead_runs
from sheldon.engine.lineage import (
    CACHED,
    PINNED,
    RAN,
    StepResult,
    data_state,
    describe_pipeline,
    format_headline,
    headline_of,
    log_lineage,
    note_of,
    pipeline_metrics,
    source_state,
)
from sheldon.engine.overrides import resume_command
from sheldon.engine.plan import PREPARE_AHEAD, Outcome, Plan, Trial, prepare
from sheldon.engine.steps import StepConfig, Steps
from sheldon.engine.upstream import Upstream, input_sources, step_key
from sheldon.step.artifacts import digest_path
from sheldon.step.store import check_artifact_location
from sheldon.step.tracking import allow_concurrent_runs, configure_tracking, settle_wandb_mode


@dataclass(kw_only=True)
class PipelineContext:
    """What every step of one pipeline run shares."""

    steps: Steps
    experiment_id: str
    env_manager: str
    pipeline_run_id: str
    forced: dict[str, str]  # steps that run even when a cached run exists -> why
    lineage_tags: dict[str, str]  # git and data state, tagged on every step run
    origins: dict[str, str]  # step -> where its run came from (RAN, CACHED, PINNED)
    selected: list[str]  # the steps this pipeline runs, in order
    prestarted: Prestarted  # interpreters started ahead for steps about to launch
    backend: Backend  # where every step launches (main.backend)


def workspace_changed(steps: Steps, step: str, params: dict[str, str], run: Run) -> str:
    """Why a step's folder in the working tree no longer holds what `run` logged from it ('' if it does)."""
    if steps.fact(step).workspace is None:
        return ""
    param, artifact = steps.fact(step).workspace
    folder = repo_path(params[param])
    if not folder.is_dir():
        return f"{folder} is missing"
    if digest_path(folder) != run.data.tags.get(DIGEST_TAG + artifact):
        return f"{folder} holds other data than its run {run.info.run_id[:8]} logged"
    return ""


def restore_workspace(steps: Steps, step: str, params: dict[str, str], run: Run) -> str:
    """Bring the step's folder in the working tree back to what `run` logged from it without running
    the step, in the step's own way (StepFacts.restore): what was done, or '' if it was not."""
    fact = steps.fact(step)
    if fact.restore is None or fact.workspace is None:
        return ""
    try:
        done = fact.restore(repo_path(params[fact.workspace[0]]))
    except StepError as err:
        print(f"  cannot bring it back without running {step}: {err}")
        return ""
    return done if done and not workspace_changed(steps, step, params, run) else ""


def launch_and_wait(
    step: str, params: dict[str, str], tags: dict[str, str], context: PipelineContext
) -> StepResult:
    """Start a step where its backend says (this machine, or a Kubernetes Job), tagged with its
    lineage before it can finish, and wait for it."""
    started = time.perf_counter()
    # The step itself too, when nothing prepared it (the steps before it were cached): started from
    # the template, it runs in a process group of its own from its first moment, as every step.
    after = context.selected.index(step) + 1
    prepare(context.selected[after - 1 : after], context.env_manager, context.prestarted, context.backend)
    if context.backend.name == "kubernetes":
        from sheldon.engine.launchers.kubernetes import start_job  # its clients load for it alone

        launched = start_job(step, params, context.experiment_id, context.backend.config)
    else:
        launched = start_local(
            step,
            params,
            experiment_id=context.experiment_id,
            env_manager=context.env_manager,
            prestarted=context.prestarted,
        )
    # The next steps' inputs are about to change, so they will most likely run too.
    ahead = context.selected[after : after + PREPARE_AHEAD]
    prepare(ahead, context.env_manager, context.prestarted, context.backend)
    try:
        status = "ran" if launched.wait(tags) else "failed"
    except Interrupted as stop:
        stop.resume = continue_command(step, launched.run_id, context)
        raise
    seconds = time.perf_counter() - started
    run = mlflow.get_run(launched.run_id)
    return StepResult(
        step=step,
        status=status,
        seconds=seconds,
        run_id=launched.run_id,
        headline=headline_of(run),
        note=note_of(run),
    )


def continue_command(step: str, run_id: str, context: PipelineContext) -> str:
    """After a stop, the command that continues the step from the checkpoints its run kept (where
    its CHECKPOINTS_TAG says), when it can resume (StepFacts.resume) and kept one; else ''."""
    resume = context.steps.fact(step).resume
    folder = mlflow.get_run(run_id).data.tags.get(CHECKPOINTS_TAG, "")
    if not resume or not folder or not any(Path(folder).glob("*")):
        return ""
    return resume_command(context.selected, context.env_manager, resume)


def run_step(step: str, config: StepConfig, produced: dict[str, Run], context: PipelineContext) -> StepResult:
    """Reuse a finished run with the same cache key, or launch the step. Pipelines running at once
    on this machine (a parallel sweep) take turns per key: one runs the step, the others reuse it."""
    steps = context.steps
    params = config[0]
    parts, uris = step_key(steps, step, config, produced)
    key, digests = parts.key, parts.inputs
    with machine_lock(key, "another pipeline runs this step with the same inputs: waiting to reuse it"):
        why = context.forced.get(step, "")
        cached = None if why else find_cached_run(context.experiment_id, key)
        if cached is not None and (changed := workspace_changed(steps, step, params, cached)):
            if restored := restore_workspace(steps, step, params, cached):
                print(f"{step}: cached, but {changed}: {restored}")
            else:
                print(f"{step}: cached, but {changed}: running it again to bring it back")
                cached, why = None, changed
        sources = input_sources(steps, step, config, produced, context.origins)
        if is_verbose():
            reused = f": cached, reusing run {cached.info.run_id}" if cached else ""
            print(f"\n=== {step}{reused} ===")
            for param, source in sources.items():
                print(f"  {param} <- {source}", flush=True)
        if cached is not None:
            result = StepResult(
                step=step,
                status="cached",
                seconds=0.0,
                run_id=cached.info.run_id,
                headline=headline_of(cached),
            )
        else:
            why = why or why_not_cached(context.experiment_id, parts, steps.section(step), sources)
            if is_verbose():
                print(f"  why: {why}", flush=True)
            tags = {
                PIPELINE_RUN_TAG: context.pipeline_run_id,
                PROCESS_TAG: os.environ[PIPELINE_ENV],  # the step dies with its pipeline (core/processes.py)
                KEY_PARTS_TAG: parts.record(),
                WHY_TAG: why[:5000],
                **context.lineage_tags,
            }
            tags |= {INPUT_DIGEST_TAG + name: digest for name, digest in digests.items()}
            tags |= {INPUT_SOURCE_TAG + name: source for name, source in sources.items()}
            result = launch_and_wait(step, params | uris, tags, context)
            if result.status == "ran":
                # Only now, seen finished by its pipeline, may the run stand in for the step: a run whose
                # pipeline was killed never gets its key, even if its own process reached the end.
                mlflow.MlflowClient().set_tag(result.run_id, KEY_TAG, key)
        context.origins[step] = CACHED if cached is not None else RAN
        result.cache_key, result.inputs, result.input_digests = key, uris, digests
        run = cached or mlflow.get_run(result.run_id)
        logged = run.data.tags
        result.outputs = {n.removeprefix(DIGEST_TAG): logged[n] for n in logged if n.startswith(DIGEST_TAG)}
        produced[step] = run
        # Its line, in the summary's columns: `train_model  ran  15.0 s  best_val_accuracy=0.97  (run d03...)`
        # and, when quiet, why it ran (verbose said so under its header)
        took = f"{result.seconds:.1f} s" if cached is None else ""
        said = f"{step:<{max(map(len, context.selected))}}  {result.status:<6}  {took:>7}  "
        said = (said + format_headline(result.headline)).rstrip() + f"  (run {result.run_id[:8]})"
        print(said + (f"  why: {why}" if cached is None and not is_verbose() else ""), flush=True)
        return result


def failure_hint(steps: Steps, failed: StepResult, selected: list[str], env_manager: str) -> str:
    """What to do after a step failed. A bad setting or input (the step's one-line error, kept as
    its run's ERROR_TAG) needs fixing first: the same command would fail again. After a crash, the
    command that resumes, continuing the step where it stopped if it can."""
    error = mlflow.get_run(failed.run_id).data.tags.get(ERROR_TAG, "") if failed.run_id else ""
    if error:
        return (
            f"error: step {failed.step} failed: {error}\nFix what it says (a setting: in config.yaml or "
            "-P hydra_options=...), then run the pipeline again: the steps that finished are reused."
        )
    resume = resume_command(selected, env_manager, steps.fact(failed.step).resume)
    return (
        f"error: step {failed.step} failed; later steps did not run. "
        f"Fix it, then resume (finished steps are reused):\n  {resume}"
    )


def open_pipeline_run(experiment_id: str, launcher: str | None, trial: Trial | None) -> mlflow.ActiveRun:
    """The pipeline run (the launcher's run when it is in this experiment; a child of the sweep's
    run for a trial), tagged with this process so that a later pipeline can tell whether it was
    left behind."""
    if launcher:
        mlflow.MlflowClient().set_tag(launcher, RUN_NAME_TAG, "pipeline")
        run = mlflow.start_run(run_id=launcher)
    elif trial:
        tags = {TRIAL_TAG: trial.overrides, TRIAL_NUMBER_TAG: str(trial.number)}
        sweep_overrides = mlflow.get_run(trial.sweep_run_id).data.params.get(SWEEP_OVERRIDES_PARAM, "")
        name = trial.run_name(sweep_overrides)
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=name, parent_run_id=trial.sweep_run_id, tags=tags
        )
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name="pipeline")
    mlflow.set_tag(PROCESS_TAG, os.environ[PIPELINE_ENV])
    return run


def mark_all_cached(run_name: str, trial: Trial | None) -> None:
    """Name the active pipeline run for having reused every step (`pipeline (all cached)`) and, but
    for a trial, which its sweep's table counts, tag it: `make ui`'s runs view leaves such runs
    out, so that re-runs do not bury the runs that trained."""
    mlflow.set_tag(RUN_NAME_TAG, f"{run_name} (all cached)")
    if trial is None:
        mlflow.set_tag(ALL_CACHED_TAG, "true")


def open_experiment(name: str) -> str:
    """The pipeline's MLflow experiment (made if new), cleared of runs left behind by dead processes.
    Its artifact store, where the steps write to it themselves (an S3 bucket), is checked first."""
    experiment = mlflow.set_experiment(name)
    check_artifact_location(experiment.artifact_location)
    experiment_id = experiment.experiment_id
    allow_concurrent_runs(mlflow.get_tracking_uri())
    mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    fail_dead_runs([experiment_id])
    return experiment_id


def pipeline_params(steps: Steps, plan: Plan) -> dict[str, str]:
    """The resolved parameters of the pipeline's steps, named as config.yaml and overrides name
    them (`train_model.lr`, `data.source`): the runs table sorts and filters pipelines by them."""
    return {
        f"{steps.section(step)}.{name}": value
        for step, (params, _) in plan.configs.items()
        for name, value in params.items()
    }


def run_plan(
    config: DictConfig, steps: Steps, plan: Plan, prestarted: Prestarted, trial: Trial | None = None
) -> Outcome:
    """Run the planned steps in order under one pipeline run, each in the interpreter started
    ahead for it when there is one."""
    selected, env_manager = plan.selected, plan.env_manager
    configure_tracking()
    settle_wandb_mode()  # once for all steps: a rejected key or unreachable W&B means offline, said once
    experiment_name = str(config.main.experiment_name)
    experiment_id = open_experiment(experiment_name)
    for settings in plan.settings.values():  # before any step launches, and before the pipeline run opens
        settings.check_with_store()
    upstream = Upstream.of(steps, config, plan, experiment_id)
    upstream.foresee(plan.forced)  # a missing stand-in that can be told now stops it here
    produced: dict[str, Run] = {}
    origins: dict[str, str] = {}
    where = f"env {env_manager}" if plan.backend.name == "local" else f"backend {plan.backend.name}"
    print(f"pipeline: {' -> '.join(selected)} (tracking {mlflow.get_tracking_uri()}, {where})")

    results: list[StepResult] = []
    launcher = None if trial else claim_launcher_run(experiment_id)  # a sweep's went to the sweep
    with open_pipeline_run(experiment_id, launcher, trial) as pipeline:
        run_id, lineage = pipeline.info.run_id, source_state()
        context = PipelineContext(
            steps=steps,
            experiment_id=experiment_id,
            env_manager=env_manager,
            pipeline_run_id=run_id,
            forced=plan.forced,
            lineage_tags=lineage,
            origins=origins,
            selected=selected,
            prestarted=prestarted,
            backend=plan.backend,
        )
        mlflow.log_text(OmegaConf.to_yaml(config, resolve=True), "config.yaml")
        mlflow.log_params(pipeline_params(steps, plan))
        describe_pipeline(steps, plan.configs)
        mlflow.set_tags({PINNED_TAG + step: run_id for step, run_id in plan.pins.items()})
        try:
            for step in selected:
                upstream.resolve_before(step, produced, origins)
                results.append(run_step(step, plan.configs[step], produced, context))
                if results[-1].status == "failed":
                    break
        except Interrupted as stop:
            stop.during = selected[len(results)]
            mlflow.set_tag(STOPPED_TAG, f"{stop} during {stop.during}")
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise
        stand_ins = [
            StepResult(
                step=s,
                status="pinned" if origins[s] == PINNED else "cached",
                seconds=0.0,
                run_id=r.info.run_id,
                headline=headline_of(r),
            )
            for s, r in produced.items()
            if s in upstream.needed_by
        ]
        results = sorted(stand_ins + results, key=lambda result: steps.order.index(result.step))
        summary = log_lineage(pipeline.info.run_id, results)
        mlflow.set_tag(RAN_STEPS_TAG, ",".join(r.step for r in results if r.status == "ran"))
        mlflow.set_tags(data_state())  # the data its steps used: `data.source` is new data's, if any
        if not any(r.status in ("ran", "failed") for r in results):  # every step reused
            mark_all_cached(pipeline.info.run_name, trial)
        print(f"\n{summary}\n\npipeline run {pipeline.info.run_id} in experiment {experiment_name!r}")
        outcome = Outcome(0, run_id=run_id, metrics=pipeline_metrics(results))
        failed = [r for r in results if r.status == "failed"]
        if failed:
            mlflow.set_tag(FAILED_STEP_TAG, failed[0].step)
            print(failure_hint(steps, failed[0], selected, env_manager), file=sys.stderr)
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            return Outcome(1, run_id=run_id, metrics=outcome.metrics)
    return outcome
