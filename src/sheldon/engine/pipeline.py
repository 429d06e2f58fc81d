"""A pipeline from start to end: its plan (sheldon/engine/plan.py), made before MLflow loads
(~1 s to import); then the interpreters of the first steps to run start (sheldon/engine/launchers/
prestart.py) while the engine (sheldon/engine/runner.py) loads and finds each step's inputs; a bad
setting or a stop signal ends it with one line and an exit code."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf import DictConfig

from sheldon.core.errors import StepError
from sheldon.core.output import set_verbose
from sheldon.core.processes import PIPELINE_ENV, Interrupted, process_token, use_this_python
from sheldon.core.vocabulary import TRIAL_ENV
from sheldon.engine.backends import check_machine
from sheldon.engine.launchers.prestart import Prestarted
from sheldon.engine.plan import PREPARE_AHEAD, Outcome, Trial, make_plan, prepare, resolve_env_manager
from sheldon.engine.steps import Steps
from sheldon.step.store import check_tracking_store, tracking_environment


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


def run_pipeline(config: DictConfig, steps: Steps, trial: Trial | None = None) -> Outcome:
    """Run the steps config.yaml selects, in order, under one pipeline run."""
    plan = make_plan(config, steps)
    if config.main.plan:
        check_tracking_store(tracking_environment())
        from sheldon.engine.explain import show_plan  # MLflow and the engine, as below

        return show_plan(config, steps, plan)
    set_up_environment(config, trial)
    check_machine(plan.backend)
    with started_ahead(trial) as prestarted:  # interpreters a stop or an error leaves unused end
        if plan.selected[0] in plan.forced:  # it will run: interpreters start while the engine loads
            prepare(plan.selected[:PREPARE_AHEAD], plan.env_manager, prestarted, plan.backend)
        from sheldon.engine.runner import (
            run_plan,  # MLflow and the engine: ~1 s, the interpreters' head start
        )

        return run_plan(config, steps, plan, prestarted, trial)


_shared: list[Prestarted] = []  # a sweep's trials in this process: one template for them all


def share_step_template(config: DictConfig) -> None:
    """A sweep opens: start the template its trials' steps fork from
    (sheldon/engine/launchers/prestart.py), shared by the trials of this process and of the workers a
    launcher starts for them (Hydra's joblib), which would each start one of their own (~3 s of CPU each,
    on the trials' time). Started now, it imports while the launcher gets the trials going."""
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
            from sheldon.engine.launchers.runs import discard_launcher_run  # MLflow: on this path only

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
