"""The runs a step's inputs come from, and its cache key: the runs of the steps before it in this
pipeline, and those that stand in for the steps it needs but does not run now (upstream runs,
pinned by hand or found by the key this configuration gives them)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from sheldon.core.errors import StepError, shorten
from sheldon.core.paths import step_dir
from sheldon.core.vocabulary import STEP_TAG, runs_uri
from sheldon.engine.cache import KeyParts, any_cached_run, find_cached_run, key_parts, output_digest
from sheldon.engine.lineage import CACHED, PINNED
from sheldon.engine.overrides import resume_command
from sheldon.engine.plan import Plan
from sheldon.engine.steps import StepConfig, Steps


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
