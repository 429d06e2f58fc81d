"""The plan without running (main.plan=true): each selected step, and each upstream run standing in
for one that is not selected, as `run` or `cached` (with the run it reuses), and for each step that
runs, why: what differs from its latest finished run (sheldon/engine/cache.py's why_not_cached). Nothing
is launched and no MLflow run is made."""

from __future__ import annotations

import mlflow
from mlflow.entities import Run
from omegaconf import DictConfig

from sheldon.core.output import text_table
from sheldon.engine.cache import NEVER_RAN, why_not_cached
from sheldon.engine.launchers.runs import discard_launcher_run
from sheldon.engine.lineage import CACHED, PINNED
from sheldon.engine.plan import Outcome, Plan
from sheldon.engine.runner import workspace_changed
from sheldon.engine.steps import Steps
from sheldon.engine.upstream import Upstream, input_sources, step_key
from sheldon.step.tracking import configure_tracking


def show_plan(config: DictConfig, steps: Steps, plan: Plan) -> Outcome:
    """Print what the pipeline would do now, step by step, and why; run nothing."""
    configure_tracking()
    discard_launcher_run()  # `mlflow run .` made one: a plan leaves no run behind
    name = str(config.main.experiment_name)
    experiment = mlflow.get_experiment_by_name(name)  # looked up, never made: a plan writes nothing
    rows = [["step", "would", "run id / why"]]
    if experiment is None:
        upstream = Upstream.of(steps, config, plan, "")
        if upstream.needed_by:  # as the pipeline would refuse: no run can stand in for it
            raise upstream.missing(next(s for s in upstream.involved() if s in upstream.needed_by))
        rows += [[step, "run", plan.forced.get(step, NEVER_RAN)] for step in plan.selected]
    else:
        rows += plan_rows(config, steps, plan, experiment.experiment_id)
    print(f"plan: {' -> '.join(plan.selected)} (experiment {name!r}, tracking {mlflow.get_tracking_uri()})")
    print(text_table(rows))
    print("nothing was run (main.plan=true)")
    return Outcome(0)


def plan_rows(config: DictConfig, steps: Steps, plan: Plan, experiment_id: str) -> list[list[str]]:
    """A row per involved step, in pipeline order: the step, what it would do, and the run it
    reuses or why it runs. A missing stand-in raises the pipeline's own StepError."""
    upstream = Upstream.of(steps, config, plan, experiment_id)
    foreseen = upstream.foresee(plan.forced)
    known = {step: run for step, run in foreseen.items() if run is not None}
    origins = {step: PINNED if step in plan.pins else CACHED for step in known}
    rows = []
    for step in upstream.involved():
        run = foreseen[step]
        if step in plan.pins:
            rows.append([step, "pinned", run.info.run_id])
        elif run is not None:
            # a selected step's folder in the working tree must hold what its run logged (data/raw)
            changed = (
                workspace_changed(steps, step, plan.configs[step][0], run) if step in plan.selected else ""
            )
            rows.append(
                [
                    step,
                    "cached",
                    run.info.run_id + (f", but {changed}: brought back, else run" if changed else ""),
                ]
            )
        elif step not in plan.selected:  # a stand-in: found once the steps it hangs on have run
            pending = "; ".join(dict.fromkeys(pending_inputs(upstream, step, known).values()))
            rows.append(
                [step, "cached?", f"{pending}: a run that matches it is reused, else the pipeline stops"]
            )
        else:
            rows.append([step, "run", plan.forced.get(step) or why_it_runs(upstream, step, known, origins)])
    return rows


def pending_inputs(upstream: Upstream, step: str, known: dict[str, Run]) -> dict[str, str]:
    """The inputs of `step` whose producers' runs are not known before the pipeline runs, in
    pipeline order, each with why: the producer runs, or it is a stand-in found only once the
    steps before it ran."""
    steps = upstream.steps
    producers = {
        param: steps.upstream(step, param, ref)[0] for param, ref in upstream.settings(step)[1].items()
    }
    pending = {}
    for param, producer in sorted(producers.items(), key=lambda item: steps.order.index(item[1])):
        if producer not in known:
            later = "runs" if producer in upstream.selected else "is found once the steps before it ran"
            pending[param] = f"input from {producer}, which {later}"
    return pending


def why_it_runs(upstream: Upstream, step: str, known: dict[str, Run], origins: dict[str, str]) -> str:
    """Why a selected step that is not forced would run: against its latest finished run, with the
    inputs whose producers run first named as such (their outputs are not known yet)."""
    params, inputs = upstream.settings(step)
    steps = upstream.steps
    pending = pending_inputs(upstream, step, known)
    ready = (params, {param: ref for param, ref in inputs.items() if param not in pending})
    parts = step_key(steps, step, ready, known)[0]
    sources = input_sources(steps, step, ready, known, origins)
    return why_not_cached(upstream.experiment_id, parts, steps.section(step), sources, pending)
