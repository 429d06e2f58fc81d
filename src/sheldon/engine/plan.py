"""The pipeline's plan, made before MLflow loads (~1 s to import): the selected steps, their
settings, the runs pinned by hand, the steps that must run, the env manager and the backend, each
checked before anything runs; and the two records around a run: a sweep's Trial, and the Outcome."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from sheldon.core.errors import StepError, shorten
from sheldon.core.paths import step_dir
from sheldon.engine.backends import Backend, resolve_backend
from sheldon.engine.environments import ENV_MANAGERS, built_by
from sheldon.engine.launchers.prestart import Prestarted
from sheldon.engine.overrides import short_overrides
from sheldon.engine.steps import StepConfig, Steps
from sheldon.step.settings import StepSettings

# Steps whose interpreters start while an earlier step works: two, so that a short step
# (preprocess) does not leave the long one after it (train_model) half imported.
PREPARE_AHEAD = 2


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one pipeline run will do, as config.yaml and the command line say."""

    selected: list[str]  # the steps it runs, in order
    configs: dict[str, StepConfig]  # each one's MLflow parameters and inputs
    settings: dict[str, StepSettings]  # each one's settings, as it will read them (inputs unset)
    pins: dict[str, str]  # step -> run id chosen by hand (main.pin), for steps it does not run
    forced: dict[str, str]  # steps that run even when a cached run exists -> why
    env_manager: str
    backend: Backend = field(default_factory=Backend)  # where every step launches (main.backend)


def resolve_env_manager(setting: str) -> str:
    """The env manager the root run uses, so every step runs under the same one
    (MLflow does not pass it down)."""
    if setting != "auto":
        if setting not in ENV_MANAGERS:
            choices = ", ".join(ENV_MANAGERS)
            raise StepError(f"main.env_manager={shorten(setting)!r}: use auto or one of {choices}")
        return setting
    return built_by(Path(sys.prefix)) or "local"


def parse_pins(steps: Steps, spec: str, selected: list[str]) -> dict[str, str]:
    """`main.pin`: `<step>:<run id>[,...]`, runs chosen by hand for steps that do not run now."""
    pins = {}
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        step, _, run_id = item.partition(":")
        if step not in steps.order or not run_id.strip():
            raise StepError(
                f"main.pin={shorten(spec)!r}: expected <step>:<run id>, with <step> one of "
                f"{', '.join(steps.order)}"
            )
        if step in selected:
            raise StepError(
                f"main.pin names a run for {step}, which this pipeline runs: pin only steps it does not run"
            )
        pins[step] = run_id.strip()
    return pins


def make_plan(config: DictConfig, steps: Steps) -> Plan:
    """The plan, every setting checked that can be before anything runs."""
    selected = steps.select(str(config.main.steps))
    configs = {step: steps.settings(config, step) for step in selected}
    settings = steps.check_settings(config, selected)
    pins = parse_pins(steps, str(config.main.pin), selected)
    use_cache = bool(config.main.use_cache)
    if use_cache:
        forced = steps.forced(str(config.main.force), selected, configs)
    else:
        forced = dict.fromkeys(selected, "main.use_cache=false")
    env_manager = resolve_env_manager(str(config.main.env_manager))
    backend = resolve_backend(str(config.main.backend), str(config.main.backend_config))
    return Plan(
        selected=selected,
        configs=configs,
        settings=settings,
        pins=pins,
        forced=forced,
        env_manager=env_manager,
        backend=backend,
    )


@dataclass(frozen=True, kw_only=True)
class Trial:
    """One pipeline of a sweep (sheldon/engine/sweep.py): its run nests under the sweep's run, and its
    steps' W&B runs are grouped by the sweep and carry the trial's overrides."""

    sweep_run_id: str
    sweep_name: str
    overrides: str  # the job's command-line overrides, e.g. "train_model.lr=0.003"
    number: int  # Hydra's job number, from 0

    def run_name(self, sweep_overrides: str) -> str:
        """`pipeline lr=0.003`: the pipeline, named for what this trial sets that its sweep's
        command line (`sweep_overrides`) does not set for every trial."""
        varied = [o for o in self.overrides.split() if o not in sweep_overrides.split()]
        return " ".join(["pipeline", short_overrides(varied)]).strip()


@dataclass(frozen=True)
class Outcome:
    """How a pipeline ended: its exit code, its MLflow run (None if it never opened one), the
    metrics logged on that run (each step's headline, `<step>.<metric>`), and the one-line error
    that stopped it before it opened one."""

    code: int
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def prepare(steps: list[str], env_manager: str, prestarted: Prestarted, backend: Backend) -> None:
    """Start these steps' interpreters ahead of their launch (under env manager `local` on this
    machine: another env manager makes an environment of its own at launch, another backend runs
    the step elsewhere)."""
    if env_manager == "local" and backend.name == "local":
        for step in steps:
            prestarted.prepare(step_dir(step))
