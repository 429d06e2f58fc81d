"""The pipeline engine: find each planned step's inputs and cache key, run or reuse it in order
under one pipeline run, and say what happened and what to do next (sheldon/engine/pipeline.py plans)."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from sheldon.core.errors import StepError, shorten
from sheldon.core.locks import machine_lock
from sheldon.core.output import is_verbose
from sheldon.core.paths import repo_path, step_dir
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
    STEP_TAG,
    STOPPED_TAG,
    SWEEP_OVERRIDES_PARAM,
    TRIAL_NUMBER_TAG,
    TRIAL_TAG,
    WHY_TAG,
    runs_uri,
)
from sheldon.engine.backends import Backend
from sheldon.engine.cache import (
    KeyParts,
    any_cached_run,
    find_cached_run,
    key_parts,
    output_digest,
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
from sheldon.engine.plan import PREPARE_AHEAD, Outcome, Plan, Trial, prepare
from sheldon.engine.steps import StepConfig, Steps
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


def pinned_run(step: str, run_id: str) -> Run:
    """The run a user pinned for `step`: it must exist, be a run of that step, and have finished."""
    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise StepError(
            f"main.pin {step}:{shorten(run_id)}: no such run in {mlflow.get_tracking_uri()}"
        ) from None
    if run.data.tags.get(STEP_TAG) != step:
        kind = run.data.tags.get(STEP_TAG) or run.info.run_name
        raise StepError(f"main.pin {step}:{shorten(run_id)}: that is a run of {kind}, not of {step}")
    if run.info.status != "FINISHED":
        raise StepError(f"main.pin {step}:{shorten(run_id)}: that run is {run.info.status}, not FINISHED")
    return run


def step_key(
    steps: Steps, step: str, config: StepConfig, produced: dict[str, Run]
) -> tuple[KeyParts, dict[str, str]]:
    """What a step's cache key hashes under this configuration, with the URIs of its inputs."""
    params, inputs = config
    uris, digests = {}, {}
    for param, ref in inputs.items():
        upstream, artifact = steps.upstream(step, param, ref)
        uris[param] = runs_uri(produced[upstream].info.run_id, artifact)
        digests[param] = output_digest(produced[upstream], artifact)
    return key_parts(step, step_dir(step), params, digests, steps.state_digests(step)), uris


def input_sources(
    steps: Steps, step: str, config: StepConfig, produced: dict[str, Run], origins: dict[str, str]
) -> dict[str, str]:
    """Where each input of a step comes from: `preprocess run 1a2b3c4d (cached, same config)`."""
    sources = {}
    for param, ref in config[1].items():
        upstream = steps.upstream(step, param, ref)[0]
        sources[param] = f"{upstream} run {produced[upstream].info.run_id[:8]} ({origins[upstream]})"
    return sources


@dataclass(frozen=True, kw_only=True)
class Upstream:
    """The runs that stand in for the steps the selected ones need but do not run now (stand-ins):
    the run pinned by hand (main.pin), else the finished run that the current configuration would
    produce (the same cache key), never merely the latest one.

    A stand-in's key hashes the outputs of the steps before it, so it is looked up in pipeline
    order, once those exist (`resolve_before`): with `steps=download_dataset,train_model`,
    preprocess's run is found after download_dataset ran or was reused. A missing stand-in is
    refused before anything launches wherever that can be told (`foresee`): when the steps it
    hangs on are stand-ins or selected steps that will be reused, or when its step has no
    reusable run at all. Only a stand-in downstream of a selected step that really runs (new data,
    main.force) can be missing after that step ran; its run is kept, so the command the refusal
    names reuses it."""

    steps: Steps
    config: DictConfig
    selected: list[str]
    pins: dict[str, str]
    experiment_id: str
    env_manager: str
    needed_by: dict[str, str]  # stand-in -> a step that takes its output
    # cache key -> its stand-in run: looked up once, by `foresee`, then found again in the loop
    found: dict[str, Run] = field(default_factory=dict)

    @classmethod
    def of(cls, steps: Steps, config: DictConfig, plan: Plan, experiment_id: str) -> Upstream:
        """The stand-ins of this plan; a pin no selected step needs is refused."""
        needed_by: dict[str, str] = {}
        todo = list(plan.selected)
        while todo:
            step = todo.pop()
            for param, ref in steps.settings(config, step)[1].items():
                upstream = steps.upstream(step, param, ref)[0]
                if upstream not in plan.selected and upstream not in needed_by:
                    needed_by[upstream] = step
                    if upstream not in plan.pins:  # a pinned run stands as it is: its inputs do not matter
                        todo.append(upstream)
        if unused := set(plan.pins) - set(needed_by):
            names = ", ".join(sorted(unused))
            raise StepError(f"main.pin names {names}, whose output no selected step takes")
        return cls(
            steps=steps,
            config=config,
            selected=plan.selected,
            pins=plan.pins,
            experiment_id=experiment_id,
            env_manager=plan.env_manager,
            needed_by=needed_by,
        )

    def settings(self, step: str) -> StepConfig:
        return self.steps.settings(self.config, step)

    def involved(self) -> list[str]:
        """The selected steps and their stand-ins, in pipeline order."""
        return [s for s in self.steps.order if s in self.selected or s in self.needed_by]

    def producers(self, step: str) -> set[str]:
        """The steps whose outputs `step`'s key hashes (none for a pinned run: it stands as it is)."""
        if step in self.pins:
            return set()
        inputs = self.settings(step)[1]
        return {self.steps.upstream(step, param, ref)[0] for param, ref in inputs.items()}

    def stand_in(self, step: str, produced: dict[str, Run]) -> tuple[Run, str]:
        """The run standing in for `step` (and where it came from), its producers' runs in `produced`."""
        if step in self.pins:
            return pinned_run(step, self.pins[step]), PINNED
        key = step_key(self.steps, step, self.settings(step), produced)[0].key
        if key not in self.found:
            if (run := find_cached_run(self.experiment_id, key)) is None:
                raise self.missing(step)
            self.found[key] = run
        return self.found[key], CACHED

    def missing(self, step: str) -> StepError:
        """No run of this configuration stands in for `step`: the command that makes one (the
        selected steps with the stand-ins from `step` on: the steps before it are reused)."""
        later = self.steps.order[self.steps.order.index(step) :]
        produce = [s for s in self.involved() if s in self.selected or s in later]
        return StepError(
            f"{self.needed_by[step]} needs the output of {step}, but no finished {step} run matches this "
            f"configuration (its code, parameters and inputs); make one along with the rest: "
            f"{resume_command(produce, self.env_manager)}  (or name a run: main.pin={step}:<run id>)"
        )

    def foresee(self, forced: Collection[str]) -> dict[str, Run | None]:
        """Before anything launches: the run each involved step will take, as far as can be told
        now. A selected step maps to its cached run, a stand-in to its run; None when the step will
        run, or when a selected step it hangs on runs first (its key is not known yet). Raises
        the StepError of a missing stand-in wherever that can be told now (see the class)."""
        foreseen: dict[str, Run | None] = {}
        known: dict[str, Run] = {}  # the runs foreseen so far
        for step in self.involved():
            run = None
            if not self.producers(step) <= known.keys():  # a step it hangs on runs first
                if step in self.needed_by and not any_cached_run(self.experiment_id, step):
                    raise self.missing(step)
            elif step not in self.selected:
                run = self.stand_in(step, known)[0]
            elif step not in forced:
                key = step_key(self.steps, step, self.settings(step), known)[0].key
                run = find_cached_run(self.experiment_id, key)
            foreseen[step] = run
            if run is not None:
                known[step] = run
        return foreseen

    def resolve_before(self, step: str, produced: dict[str, Run], origins: dict[str, str]) -> None:
        """Find, into `produced` and `origins`, the stand-ins before `step` in pipeline order that
        are not found yet: the steps they hang on have produced by now."""
        for earlier in self.steps.order[: self.steps.order.index(step)]:
            if earlier in self.needed_by and earlier not in produced:
                produced[earlier], origins[earlier] = self.stand_in(earlier, produced)


def resume_command(selected: list[str], env_manager: str, extra: str = "") -> str:
    """The command that re-runs this pipeline with the user's overrides (and `extra`, which
    replaces the user's value of the same setting); the cache makes it start at the failed step."""
    from hydra.core.hydra_config import HydraConfig

    # main.plan: the command a plan names is the one that runs
    replaced = ("main.steps=", "main.plan=", *([extra.split("=")[0] + "="] if extra else []))
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(replaced)]
    overrides += [extra] if extra else []
    command = f"mlflow run . --env-manager {env_manager} -P steps={','.join(selected)}"
    return command + (f" -P hydra_options={shlex.quote(' '.join(overrides))}" if overrides else "")


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
