"""The pipeline's plan, made before MLflow loads (~1 s to import): the selected steps, their
settings, the runs pinned by hand, the steps that must run and the env manager; then the
interpreters of the first steps to run start (sheldon/prestart.py) while the engine
(sheldon/engine.py) loads and finds each step's inputs."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from sheldon.backends import Backend, check_machine, resolve_backend
from sheldon.environments import built_by
from sheldon.errors import StepError, shorten
from sheldon.output import set_verbose
from sheldon.overrides import short_overrides
from sheldon.paths import step_dir
from sheldon.prestart import Prestarted
from sheldon.processes import PIPELINE_ENV, Interrupted, process_token
from sheldon.settings import StepSettings
from sheldon.steps import StepConfig, Steps
from sheldon.store import check_tracking_store, tracking_environment
from sheldon.vocabulary import TRIAL_ENV

ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")
# Steps whose interpreters start while an earlier step works: two, so that a short step
# (preprocess) does not leave the long one after it (train_model) half imported.
PREPARE_AHEAD = 2


@dataclass(frozen=True)
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
    return Plan(selected, configs, settings, pins, forced, env_manager, backend)


@dataclass(frozen=True)
class Trial:
    """One pipeline of a sweep (sheldon/sweep.py): its run nests under the sweep's run, and its
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


def set_up_environment(config: DictConfig, trial: Trial | None = None) -> None:
    """What every step launched by this process inherits: the pipeline to watch, one tracking
    store (checked), this interpreter's `python`, the W&B project and group (a sweep's name, for
    its trials), a trial's overrides, and what to print (main.verbose)."""
    os.environ[PIPELINE_ENV] = process_token()  # each step watches it, and dies with this process
    set_verbose(bool(config.main.verbose))
    check_tracking_store(tracking_environment())
    use_this_python()
    os.environ["WANDB_PROJECT"] = str(config.main.project_name)
    os.environ["WANDB_RUN_GROUP"] = trial.sweep_name if trial else str(config.main.experiment_name)
    if trial:
        os.environ[TRIAL_ENV] = trial.overrides


def use_this_python() -> None:
    """A step's command starts with `python`: the one beside this interpreter, so
    `.venv/bin/python main.py` works without an activated venv."""
    here, path = str(Path(sys.executable).parent), os.environ.get("PATH", "")
    if here not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([here, path])


def prepare(steps: list[str], env_manager: str, prestarted: Prestarted, backend: Backend) -> None:
    """Start these steps' interpreters ahead of their launch (under env manager `local` on this
    machine: another env manager makes an environment of its own at launch, another backend runs
    the step elsewhere)."""
    if env_manager == "local" and backend.name == "local":
        for step in steps:
            prestarted.prepare(step_dir(step))


def run_pipeline(config: DictConfig, steps: Steps, trial: Trial | None = None) -> Outcome:
    """Run the steps config.yaml selects, in order, under one pipeline run."""
    plan = make_plan(config, steps)
    if config.main.plan:
        check_tracking_store(tracking_environment())
        from sheldon.explain import show_plan  # MLflow and the engine, as below

        return show_plan(config, steps, plan)
    set_up_environment(config, trial)
    check_machine(plan.backend)
    with started_ahead(trial) as prestarted:  # interpreters a stop or an error leaves unused end
        if plan.selected[0] in plan.forced:  # it will run: interpreters start while the engine loads
            prepare(plan.selected[:PREPARE_AHEAD], plan.env_manager, prestarted, plan.backend)
        from sheldon.engine import run_plan  # MLflow and the engine: ~1 s, the interpreters' head start

        return run_plan(config, steps, plan, prestarted, trial)


_shared: list[Prestarted] = []  # a sweep's trials in this process: one template for them all


def share_step_template(config: DictConfig) -> None:
    """A sweep opens: start the template its trials' steps fork from (sheldon/prestart.py), shared
    by the trials of this process and of the workers a launcher starts for them (Hydra's joblib),
    which would each start one of their own (~3 s of CPU each, on the trials' time). Started now,
    it imports while the launcher gets the trials going."""
    if (
        resolve_env_manager(str(config.main.env_manager)) != "local"
        or config.main.backend != "local"
        or _shared
    ):
        return
    use_this_python()
    if python := shutil.which("python"):
        _shared.append(Prestarted())
        atexit.register(_shared[0].close)
        _shared[0].share(python)


@contextmanager
def started_ahead(trial: Trial | None) -> Iterator[Prestarted]:
    """A pipeline's interpreters started ahead, ended with it; a sweep's trials in one process
    share theirs, so the template imports once a sweep, not once a trial (~3 s of CPU each)."""
    if trial is None:
        with Prestarted() as prestarted:
            yield prestarted
        return
    if not _shared:
        _shared.append(Prestarted())
        atexit.register(_shared[0].close)
    try:
        yield _shared[0]
    finally:
        _shared[0].release()


def run_and_report(config: DictConfig, steps: Steps, trial: Trial | None = None) -> Outcome:
    """Run the pipeline; a bad setting or a stop signal ends it with one line, and an exit code."""
    try:
        return run_pipeline(config, steps, trial)
    except StepError as err:
        print(f"error: {err}", file=sys.stderr)
        if trial is None:
            discard_launcher_run()
        return Outcome(1, error=str(err))
    except Interrupted as stop:
        where = f" during {stop.during}: its processes are stopped and its run KILLED" if stop.during else ""
        kept = (
            f"; its checkpoint is kept: continue from it (finished steps are reused) with\n  {stop.resume}"
            if stop.resume
            else "; nothing of it was kept, and the next run reuses the finished steps"
        )
        print(f"\nerror: {stop}{where}{kept}", file=sys.stderr)
        return Outcome(stop.exit_code)


def discard_launcher_run() -> None:
    """A launch that fails before its pipeline run opens leaves no stray run behind."""
    from mlflow.exceptions import MlflowException  # loaded here only on this path

    from sheldon.launch import claim_launcher_run

    with suppress(MlflowException):  # the store itself is what failed: the error said so
        claim_launcher_run(None)
