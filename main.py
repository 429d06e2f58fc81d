"""The pipeline: runs the selected steps of config.yaml in order, each as an MLflow project.

mlflow run . --env-manager local                           # every step
mlflow run . --env-manager local -P steps=preprocess,train_model
mlflow run . --env-manager local -P hydra_options="train_model.lr=0.01 train_model.epochs=3"
python main.py main.steps=evaluate                         # same, without the outer MLflow run
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sheldon.artifacts import digest_path
from sheldon.cache import (
    DIGEST_TAG,
    KEY_TAG,
    cache_key,
    code_digest,
    find_cached_run,
    output_digest,
)
from sheldon.cli import fraction
from sheldon.errors import StepError, shorten
from sheldon.paths import REPO_ROOT, repo_path
from sheldon.processes import (
    PIPELINE_ENV,
    PROCESS_TAG,
    STOPPED_TAG,
    Interrupted,
    is_alive,
    process_token,
    raise_on_signals,
    stop_group,
)
from sheldon.store import check_tracking_store
from sheldon.tracking import (
    ERROR_TAG,
    HEADLINE_TAG,
    STEP_TAG,
    allow_concurrent_runs,
    configure_tracking,
    delete_launcher_run,
    settle_wandb_mode,
)

# The steps, in pipeline order. Each is an MLflow project in src/<step>.
_steps = [
    "download_dataset",
    "preprocess",
    "train_model",
    "evaluate",
]

# The config.yaml section holding a step's parameters is the step's name, except where
# SEED.md named it otherwise (`data.download_new`, `data.source`).
_sections = {"download_dataset": "data"}

# Repo files outside src/<step> that a step's outputs depend on: hashed into its cache key.
_state_files = {"download_dataset": ["data.dvc"]}

# Steps that also leave their output in the working tree: (the parameter naming that folder, the
# artifact logged from it). A cached run is reused only while the folder still holds that artifact.
_workspace = {"download_dataset": ("raw_dir", "raw_data")}

# The override that makes a crashed step continue where it stopped, in the resume command.
_resume_overrides = {"train_model": "train_model.resume=true"}

ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")

# Settings a step would refuse only once the steps before it have run: checked before anything runs,
# with the same rule the step's own argument parser applies.
_checked_early = {"evaluate.min_accuracy": fraction}
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CACHED, PINNED = "cached, same config", "pinned by hand"  # where an input's run came from


@dataclass
class StepResult:
    step: str
    status: str  # ran, cached, failed
    seconds: float
    run_id: str | None
    headline: str = ""
    cache_key: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # parameter -> artifact URI
    input_digests: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # artifact -> content digest


@dataclass
class PipelineContext:
    """What every step launch of one pipeline run shares."""

    experiment_id: str
    env_manager: str
    pipeline_run_id: str
    forced: set[str]  # steps that run even when a cached run exists
    lineage_tags: dict[str, str]  # git and data state, tagged on every step run
    origins: dict[str, str]  # step -> where its run came from (CACHED, PINNED, ran in this pipeline)


def section_of(step: str) -> str:
    return _sections.get(step, step)


def select_steps(spec: str) -> list[str]:
    """Parse `main.steps` (comma-separated names, or `all`) into pipeline order.
    A unique prefix names a step too, so SEED.md's `steps=download` works."""
    if spec.strip() in ("all", ""):
        return list(_steps)
    names = [n.strip() for n in spec.split(",")]
    if "" in names:
        raise StepError(f"main.steps={shorten(spec)!r} has an empty item: name steps between commas")
    chosen = set()
    for name in names:
        matches = [s for s in _steps if s == name] or [s for s in _steps if s.startswith(name)]
        if len(matches) != 1:
            problem = "ambiguous" if matches else "unknown"
            raise StepError(f"{problem} step {shorten(name)!r}; valid steps: {', '.join(_steps)}")
        chosen.add(matches[0])
    return [s for s in _steps if s in chosen]


def step_config(config: DictConfig, step: str) -> tuple[dict[str, str], dict[str, str]]:
    """A step's MLflow parameters (scalars as text, `_target_` subtrees as JSON) and its
    inputs ({parameter: "<upstream step>/<artifact>"}), all interpolations resolved."""
    section = section_of(step)
    if section not in config:
        raise StepError(f"config.yaml has no section {section!r} for step {step}")
    try:
        values = OmegaConf.to_container(config[section], resolve=True)
    except OmegaConfBaseException as err:
        raise StepError(f"config.yaml section {section!r}: {err}".splitlines()[0]) from None
    inputs = values.pop("inputs", None) or {}
    params = {
        key: json.dumps(value) if isinstance(value, (dict, list)) else "" if value is None else str(value)
        for key, value in values.items()
    }
    return params, inputs


def check_settings(config: DictConfig, selected: list[str]) -> None:
    """Refuse, before any step runs, a setting a selected step would refuse after the others ran."""
    for setting, parse in _checked_early.items():
        section, key = setting.split(".", 1)
        if section in map(section_of, selected):
            try:
                parse(OmegaConf.select(config, setting))
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise StepError(f"{setting}: {err}") from None


def parse_ref(step: str, param: str, ref: object) -> tuple[str, str]:
    """An input reference, `<upstream step>/<artifact>`, as (step, artifact)."""
    upstream, _, artifact = str(ref).partition("/")
    if upstream not in _steps or not artifact:
        raise StepError(
            f"{section_of(step)}.inputs.{param} = {shorten(ref)!r}: expected <step>/<artifact>, "
            f"with <step> one of {', '.join(_steps)}"
        )
    return upstream, artifact


def parse_pins(spec: str, selected: list[str]) -> dict[str, str]:
    """`main.pin`: `<step>:<run id>[,...]`, runs chosen by hand for steps that do not run now."""
    pins = {}
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        step, _, run_id = item.partition(":")
        if step not in _steps or not run_id.strip():
            raise StepError(
                f"main.pin={shorten(spec)!r}: expected <step>:<run id>, <step> one of {', '.join(_steps)}"
            )
        if step in selected:
            raise StepError(
                f"main.pin names a run for {step}, which this pipeline runs: pin only steps it does not run"
            )
        pins[step] = run_id.strip()
    return pins


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
    step: str, config: tuple[dict[str, str], dict[str, str]], produced: dict[str, Run]
) -> tuple[str, dict[str, str], dict[str, str]]:
    """A step's cache key under this configuration, with the URIs and digests of its inputs."""
    params, inputs = config
    uris, digests = {}, {}
    for param, ref in inputs.items():
        upstream, artifact = parse_ref(step, param, ref)
        uris[param] = f"runs:/{produced[upstream].info.run_id}/{artifact}"
        digests[param] = output_digest(produced[upstream], artifact)
    key = cache_key(step, code_digest(REPO_ROOT / "src" / step), params, digests, outside_state(step))
    return key, uris, digests


def resolve_upstream(
    config: DictConfig, selected: list[str], pins: dict[str, str], experiment_id: str, env_manager: str
) -> tuple[dict[str, Run], dict[str, str]]:
    """The runs that stand in for the steps the selected ones need but do not run now, in pipeline
    order: the run pinned by hand (main.pin), else the finished run that the current configuration
    would produce (the same cache key), never merely the latest one. Fails before anything runs
    when no run matches, naming the command that makes one."""
    needed_by: dict[str, str] = {}
    todo = list(selected)
    while todo:
        step = todo.pop()
        for param, ref in step_config(config, step)[1].items():
            upstream = parse_ref(step, param, ref)[0]
            if upstream not in selected and upstream not in needed_by:
                needed_by[upstream] = step
                if upstream not in pins:  # a pinned run stands as it is: its own inputs do not matter
                    todo.append(upstream)
    if unused := set(pins) - set(needed_by):
        raise StepError(f"main.pin names {', '.join(sorted(unused))}, whose output no selected step takes")
    produced: dict[str, Run] = {}
    origins: dict[str, str] = {}
    for step in (s for s in _steps if s in needed_by):
        if step in pins:
            produced[step], origins[step] = pinned_run(step, pins[step]), PINNED
            continue
        key = step_key(step, step_config(config, step), produced)[0]
        run = find_cached_run(experiment_id, key)
        if run is None:
            produce = [s for s in _steps[_steps.index(step) :] if s in selected or s in needed_by]
            raise StepError(
                f"{needed_by[step]} needs the output of {step}, but no finished {step} run matches this "
                f"configuration (its code, parameters and inputs); make one along with the rest: "
                f"{resume_command(produce, env_manager)}  (or name a run: main.pin={step}:<run id>)"
            )
        produced[step], origins[step] = run, CACHED
    return produced, origins


def resolve_env_manager(setting: str) -> str:
    """The env manager the root run uses, so every step runs under the same one
    (MLflow does not pass it down): MLflow's own envs live in prefixes named mlflow-<hash>."""
    if setting != "auto":
        if setting not in ENV_MANAGERS:
            choices = ", ".join(ENV_MANAGERS)
            raise StepError(f"main.env_manager={shorten(setting)!r}: use auto or one of {choices}")
        return setting
    prefix = Path(sys.prefix)
    if prefix.name.startswith("mlflow-"):
        return "conda" if (prefix / "conda-meta").exists() else "virtualenv"
    return "local"


def headline_of(run: str | Run) -> str:
    """The metric a step named as its headline, formatted for the summary."""
    data = (mlflow.get_run(run) if isinstance(run, str) else run).data
    name = data.tags.get(HEADLINE_TAG)
    if name is None or name not in data.metrics:
        return ""
    value = data.metrics[name]
    return f"{name}={value:.4f}" if not float(value).is_integer() else f"{name}={int(value)}"


def end_run_if_running(run_id: str, status: RunStatus, why: str) -> None:
    """End a run that its own process left open (killed, or stopped before it could), saying why."""
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, STOPPED_TAG, why)
        client.set_terminated(run_id, RunStatus.to_string(status))


def launch(
    step: str,
    params: dict[str, str],
    experiment_id: str,
    env_manager: str,
    tags: dict[str, str],
    sources: dict[str, str],
) -> StepResult:
    """Run src/<step> as an MLflow project, nested under the active pipeline run and tagged with
    its lineage. On a stop signal the step's whole process group is stopped and its run KILLED."""
    print(f"\n=== {step} ===", flush=True)
    for param, source in sources.items():
        print(f"  {param} <- {source}", flush=True)
    started = time.perf_counter()
    try:
        submitted = mlflow.projects.run(
            str(REPO_ROOT / "src" / step),
            "main",
            parameters=params,
            experiment_id=experiment_id,
            run_name=step,
            env_manager=env_manager,
            synchronous=False,
        )
    except MlflowException as err:
        print(f"error: cannot launch {step}: {err.message}", file=sys.stderr)
        return StepResult(step, "failed", time.perf_counter() - started, None)
    try:
        client = mlflow.MlflowClient()
        for name, value in tags.items():
            client.set_tag(submitted.run_id, name, value)
        ok = submitted.wait()
    except Interrupted as stop:
        # `mlflow run` leads the step's own process group: the terminal's Ctrl-C never reaches it.
        stop_group(submitted.command_proc.pid)
        end_run_if_running(submitted.run_id, RunStatus.KILLED, f"the pipeline was {stop}")
        raise
    seconds = time.perf_counter() - started
    if not ok:
        end_run_if_running(submitted.run_id, RunStatus.FAILED, "the step exited with an error")
    return StepResult(
        step, "ran" if ok else "failed", seconds, submitted.run_id, headline_of(submitted.run_id)
    )


def format_summary(results: list[StepResult]) -> str:
    rows = [("step", "status", "seconds", "mlflow run id", "headline")]
    rows += [(r.step, r.status, f"{r.seconds:.1f}", r.run_id or "-", r.headline) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def claim_launcher_run(experiment_id: str | None) -> str | None:
    """`mlflow run .` opens a run before main.py starts, in its own experiment (Default unless told).
    In the pipeline's experiment it becomes the pipeline run; elsewhere it is deleted, so that
    launches leave nothing in Default, failed ones included. Deleted only once that `mlflow run`
    has exited: its last act is to set the run's status, which fails on a deleted run."""
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    if not launcher or mlflow.get_run(launcher).info.experiment_id == experiment_id:
        return launcher
    delete_launcher_run(launcher)
    return None


def open_pipeline_run(experiment_id: str, launcher: str | None) -> mlflow.ActiveRun:
    """The pipeline run (the launcher's run when it is in this experiment), tagged with this
    process so that a later pipeline can tell whether it was left behind."""
    if launcher:
        mlflow.MlflowClient().set_tag(launcher, "mlflow.runName", "pipeline")
        run = mlflow.start_run(run_id=launcher)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name="pipeline")
    mlflow.set_tag(PROCESS_TAG, os.environ[PIPELINE_ENV])
    return run


def fail_dead_runs(experiment_ids: list[str]) -> None:
    """Runs left RUNNING by a process that is gone (a pipeline killed with kill -9, a crashed
    machine's session on this host) can never finish: mark them FAILED, saying why."""
    client = mlflow.MlflowClient()
    dead = [
        run
        for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000)
        if PROCESS_TAG in run.data.tags and is_alive(run.data.tags[PROCESS_TAG]) is False
    ]
    for run in dead:
        why = f"its process ({run.data.tags[PROCESS_TAG]}) ended without closing it: killed or crashed"
        end_run_if_running(run.info.run_id, RunStatus.FAILED, why)
    if dead:
        names = ", ".join(f"{r.info.run_name} {r.info.run_id[:8]}" for r in dead)
        print(f"marked {len(dead)} run(s) FAILED whose process is gone (never reused): {names}")


def forced_steps(spec: str, selected: list[str], steps: dict[str, tuple[dict, dict]]) -> set[str]:
    """`main.force`: the named steps and every selected step downstream of them."""
    forced = set(select_steps(spec)) & set(selected) if spec.strip() else set()
    for step in selected:
        if any(str(ref).split("/", 1)[0] in forced for ref in steps[step][1].values()):
            forced.add(step)
    return forced


def outside_state(step: str) -> dict[str, str]:
    """Digests of the repo files, outside src/<step>, whose content a step's outputs depend on."""
    return {
        name: hashlib.sha256((REPO_ROOT / name).read_bytes()).hexdigest()
        for name in _state_files.get(step, [])
        if (REPO_ROOT / name).is_file()
    }


def source_state() -> dict[str, str]:
    """Lineage tags shared by every step run of this pipeline: is the git tree dirty, which data."""
    tags = {}
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
    if status.returncode == 0:
        tags["sheldon.git_dirty"] = str(bool(status.stdout.strip())).lower()
    dvc_file = REPO_ROOT / "data.dvc"
    if dvc_file.is_file():
        md5 = re.search(r"md5:\s*([0-9a-f]{32})", dvc_file.read_text())
        if md5:
            tags["sheldon.data_md5"] = md5.group(1)
    return tags


def resume_command(selected: list[str], env_manager: str, extra: str | None = None) -> str:
    """The command that re-runs this pipeline with the user's overrides (and `extra`, which
    replaces the user's value of the same setting); the cache makes it start at the failed step."""
    from hydra.core.hydra_config import HydraConfig

    replaced = ["main.steps="] + ([extra.split("=")[0] + "="] if extra else [])
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(tuple(replaced))]
    overrides += [extra] if extra else []
    command = f"mlflow run . --env-manager {env_manager} -P steps={','.join(selected)}"
    return command + (f" -P hydra_options={shlex.quote(' '.join(overrides))}" if overrides else "")


def workspace_changed(step: str, params: dict[str, str], run: Run) -> str:
    """Why a step's folder in the working tree no longer holds what `run` logged from it ('' if it does)."""
    if step not in _workspace:
        return ""
    param, artifact = _workspace[step]
    folder = repo_path(params[param])
    if not folder.is_dir():
        return f"{folder} is missing"
    if digest_path(folder) != run.data.tags.get(DIGEST_TAG + artifact):
        return f"{folder} holds other data than its run {run.info.run_id[:8]} logged"
    return ""


def run_step(
    step: str,
    config: tuple[dict[str, str], dict[str, str]],
    produced: dict[str, Run],
    context: PipelineContext,
) -> StepResult:
    """Reuse a finished run with the same cache key, or launch the step."""
    params, inputs = config
    key, uris, digests = step_key(step, config, produced)
    cached = None if step in context.forced else find_cached_run(context.experiment_id, key)
    if cached is not None and (changed := workspace_changed(step, params, cached)):
        print(f"\n=== {step}: cached, but {changed}: running it again to bring it back ===")
        cached = None
    sources = {
        param: f"{parse_ref(step, param, ref)[0]} run {uris[param].split('/')[1][:8]} "
        f"({context.origins[parse_ref(step, param, ref)[0]]})"
        for param, ref in inputs.items()
    }
    if cached is not None:
        result = StepResult(step, "cached", 0.0, cached.info.run_id, headline_of(cached))
        print(f"\n=== {step}: cached, reusing run {result.run_id} ===")
    else:
        tags = {
            "sheldon.pipeline_run_id": context.pipeline_run_id,
            PROCESS_TAG: os.environ[PIPELINE_ENV],  # the step dies with its pipeline (processes.py)
            **context.lineage_tags,
        }
        tags |= {f"sheldon.input_digest.{name}": digest for name, digest in digests.items()}
        tags |= {f"sheldon.input_source.{name}": source for name, source in sources.items()}
        result = launch(step, params | uris, context.experiment_id, context.env_manager, tags, sources)
        if result.status == "ran":
            # Only now, seen finished by its pipeline, may the run stand in for the step: a run whose
            # pipeline was killed never gets its key, even if its own process reached the end.
            mlflow.MlflowClient().set_tag(result.run_id, KEY_TAG, key)
    if cached is not None:
        for param, source in sources.items():
            print(f"  {param} <- {source}")
    context.origins[step] = CACHED if cached is not None else "ran in this pipeline"
    result.cache_key, result.inputs, result.input_digests = key, uris, digests
    if result.run_id is not None:
        run = cached or mlflow.get_run(result.run_id)
        result.outputs = {
            name.removeprefix(DIGEST_TAG): value
            for name, value in run.data.tags.items()
            if name.startswith(DIGEST_TAG)
        }
        produced[step] = run
    return result


def failure_hint(failed: StepResult, selected: list[str], env_manager: str) -> str:
    """What to do after a step failed. A bad setting or input (the step's one-line error, kept as
    its run's ERROR_TAG) needs fixing first: the same command would fail again. After a crash, the
    command that resumes, continuing the step where it stopped if it can."""
    run = mlflow.get_run(failed.run_id) if failed.run_id else None
    error = run.data.tags.get(ERROR_TAG, "") if run else ""
    if error:
        return (
            f"error: step {failed.step} failed: {error}\nFix what it says (a setting: in config.yaml or "
            "-P hydra_options=...), then run the pipeline again: the steps that finished are reused."
        )
    resume = resume_command(selected, env_manager, _resume_overrides.get(failed.step))
    return (
        f"error: step {failed.step} failed; later steps did not run. "
        f"Fix it, then resume (finished steps are reused):\n  {resume}"
    )


def run_pipeline(config: DictConfig) -> int:
    selected = select_steps(str(config.main.steps))
    steps = {step: step_config(config, step) for step in selected}
    check_settings(config, selected)
    pins = parse_pins(str(config.main.pin), selected)
    forced = (
        set(selected) if not config.main.use_cache else forced_steps(str(config.main.force), selected, steps)
    )
    env_manager = resolve_env_manager(str(config.main.env_manager))
    os.environ[PIPELINE_ENV] = process_token()  # each step watches it, and dies with this process
    check_tracking_store(configure_tracking())
    settle_wandb_mode()  # once for all steps: a rejected key or unreachable W&B means offline, said once
    # MLflow launches each step through the `mlflow` command: use the one beside this interpreter,
    # so `.venv/bin/python main.py` works without an activated venv.
    here, path = str(Path(sys.executable).parent), os.environ.get("PATH", "")
    if here not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([here, path])
    os.environ["WANDB_PROJECT"] = str(config.main.project_name)
    os.environ["WANDB_RUN_GROUP"] = str(config.main.experiment_name)
    experiment_name = str(config.main.experiment_name)
    experiment = mlflow.set_experiment(experiment_name)
    allow_concurrent_runs(mlflow.get_tracking_uri())
    mlflow.MlflowClient().set_experiment_tag(
        experiment.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development"
    )
    fail_dead_runs([experiment.experiment_id])
    produced, origins = resolve_upstream(config, selected, pins, experiment.experiment_id, env_manager)
    upstream = [
        StepResult(
            step, "pinned" if origins[step] == PINNED else "cached", 0.0, run.info.run_id, headline_of(run)
        )
        for step, run in produced.items()
    ]
    print(f"pipeline: {' -> '.join(selected)} (tracking {mlflow.get_tracking_uri()}, env {env_manager})")

    results: list[StepResult] = []
    with open_pipeline_run(
        experiment.experiment_id, claim_launcher_run(experiment.experiment_id)
    ) as pipeline:
        context = PipelineContext(
            experiment.experiment_id, env_manager, pipeline.info.run_id, forced, source_state(), origins
        )
        mlflow.log_text(OmegaConf.to_yaml(config, resolve=True), "config.yaml")
        mlflow.set_tags({f"sheldon.pinned.{step}": run_id for step, run_id in pins.items()})
        try:
            for step in selected:
                result = run_step(step, steps[step], produced, context)
                results.append(result)
                if result.status == "failed":
                    break
        except Interrupted as stop:
            stop.during = selected[len(results)]
            mlflow.set_tag(STOPPED_TAG, f"{stop} during {stop.during}")
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise
        summary = format_summary(upstream + results)
        mlflow.log_text(summary + "\n", "summary.txt")
        mlflow.log_dict(
            {"pipeline_run_id": pipeline.info.run_id, "steps": [asdict(r) for r in upstream + results]},
            "lineage.json",
        )
        print(f"\n{summary}\n\npipeline run {pipeline.info.run_id} in experiment {experiment_name!r}")
        failed = [r for r in results if r.status == "failed"]
        if failed:
            mlflow.set_tag("sheldon.failed_step", failed[0].step)
            print(failure_hint(failed[0], selected, env_manager), file=sys.stderr)
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            return 1
    return 0


def discard_launcher_run() -> None:
    """A launch that fails before its pipeline run opens leaves no stray run behind."""
    with suppress(MlflowException):  # the store itself is what failed: the error said so
        claim_launcher_run(None)


@hydra.main(config_path=".", config_name="config", version_base=None)
def go(config: DictConfig) -> None:
    try:
        code = run_pipeline(config)
    except StepError as err:
        print(f"error: {err}", file=sys.stderr)
        discard_launcher_run()
        code = 1
    except Interrupted as stop:
        where = f" during {stop.during}: its processes are stopped and its run KILLED" if stop.during else ""
        print(
            f"\nerror: {stop}{where}; nothing of it was kept, and the next run reuses the finished steps",
            file=sys.stderr,
        )
        code = stop.exit_code
    if code:
        sys.exit(code)


def hydra_arguments(argv: list[str]) -> list[str]:
    """Make the command line Hydra's: `-P hydra_options="a=1 b='x y'"` arrives as one argument,
    so split it on the spaces outside quotes (keeping the quotes for Hydra's parser), and quote
    a list of steps (or of pins), which Hydra would otherwise read as a sweep (`main.steps=a,b`)."""
    token = re.compile(r"""(?:[^\s'"]|'[^']*'|"[^"]*")+""")
    parts = [part for arg in argv for part in token.findall(arg)]
    steps = re.compile(r"^(main\.(?:steps|force|pin))=([\w:,]+,[\w:,]*)$")
    return [steps.sub(r"\1='\2'", part) for part in parts]


def check_overrides(overrides: list[str]) -> None:
    """Compose the config with the overrides before Hydra does, to turn a malformed override or an
    unknown key into one line naming it (Hydra prints several, without the key for a parse error)."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as err:
            problem = err.message.splitlines()[0]
            raise StepError(f"malformed override {shorten(override)!r}: {problem}") from None
    with initialize_config_dir(config_dir=str(REPO_ROOT), version_base=None):
        try:
            compose(config_name="config", overrides=[o for o in overrides if not o.startswith("hydra")])
        except yaml.MarkedYAMLError as err:  # config.yaml itself does not parse
            mark = err.problem_mark
            where = (
                f"{Path(mark.name).name}, line {mark.line + 1}, column {mark.column + 1}"
                if mark
                else "config.yaml"
            )
            raise StepError(f"{where}: {err.problem or err.context}: fix the YAML there") from None
        except ConfigCompositionException as err:
            cause = f": {str(err.__cause__).splitlines()[0]}" if err.__cause__ else ""
            raise StepError(f"{str(err).splitlines()[0].rstrip('.')}{cause} (see config.yaml)") from None


if __name__ == "__main__":
    raise_on_signals()
    sys.argv[1:] = hydra_arguments(sys.argv[1:])
    try:
        check_overrides([arg for arg in sys.argv[1:] if not arg.startswith("-")])
    except StepError as err:
        print(f"error: {err}", file=sys.stderr)
        discard_launcher_run()
        sys.exit(1)
    except Interrupted as stop:
        sys.exit(stop.exit_code)
    try:
        go()
    finally:
        # Exit without a last garbage collection over MLflow's large heap: ~1 s of an all-cached run.
        gc.freeze()
