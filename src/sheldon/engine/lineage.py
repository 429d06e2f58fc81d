"""What a pipeline run reports: each step's result, the summary table, the lineage manifest and the
lineage tags every step run of the pipeline carries."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, field

import mlflow
from mlflow.entities import Run

from sheldon.core.output import text_table
from sheldon.core.paths import REPO_ROOT
from sheldon.core.vocabulary import (
    DATA_MD5_TAG,
    DATA_SOURCE_TAG,
    DESCRIPTION_TAG,
    GIT_DIRTY_TAG,
    HEADLINE_TAG,
    LINEAGE_FILE,
    NOTE_TAG,
)
from sheldon.data.versioning import DVC_FILE, parse_pin
from sheldon.engine.dag import chart_in, description, flowchart
from sheldon.engine.steps import StepConfig, Steps

# Where a step's run came from, as printed beside each input and tagged on the runs that read it.
RAN, CACHED, PINNED = "ran in this pipeline", "cached, same config", "pinned by hand"


@dataclass(kw_only=True)
class StepResult:
    step: str
    status: str  # ran, cached, pinned (an upstream run chosen by hand), failed
    seconds: float
    run_id: str | None
    headline: dict[str, float] = field(default_factory=dict)  # the metric the step names, if logged
    note: str = ""  # the step's one-line verdict, when it ran (evaluate: the registry's decision)
    cache_key: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # parameter -> artifact URI
    input_digests: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # artifact -> content digest


def note_of(run: Run) -> str:
    """The one-line verdict a step left on its run ('' when none)."""
    return run.data.tags.get(NOTE_TAG, "")


def headline_of(run: str | Run) -> dict[str, float]:
    """The metric a step named as its headline, {name: value}; empty if it logged none."""
    data = (mlflow.get_run(run) if isinstance(run, str) else run).data
    name = data.tags.get(HEADLINE_TAG)
    return {name: data.metrics[name]} if name in data.metrics else {}


def format_headline(headline: dict[str, float]) -> str:
    return " ".join(
        f"{name}={value:.4f}" if not float(value).is_integer() else f"{name}={int(value)}"
        for name, value in headline.items()
    )


def pipeline_metrics(results: list[StepResult]) -> dict[str, float]:
    """Each step's headline metric, named `<step>.<metric>` (`evaluate.test_accuracy`): logged on
    the pipeline run, so that the runs table sorts and filters pipelines by them."""
    return {f"{r.step}.{name}": value for r in results for name, value in r.headline.items()}


def format_summary(results: list[StepResult]) -> str:
    rows = [["step", "status", "seconds", "mlflow run id", "headline"]]
    rows += [
        [r.step, r.status, f"{r.seconds:.1f}", r.run_id or "-", format_headline(r.headline)] for r in results
    ]
    notes = [f"{r.step}: {r.note}" for r in results if r.note]
    return "\n\n".join([text_table(rows), *(["\n".join(notes)] if notes else [])])


def describe_pipeline(steps: Steps, configs: Mapping[str, StepConfig]) -> None:
    """The active pipeline run's description, which the MLflow UI renders: the picture of the
    steps it runs and what each reads (dag.py)."""
    mlflow.set_tag(DESCRIPTION_TAG, description(flowchart(steps, configs)))


def log_lineage(pipeline_run_id: str, results: list[StepResult]) -> str:
    """Log the summary table, the lineage manifest (with the pipeline's picture, as its description
    has it) and the steps' headline metrics to the active pipeline run; returns the table."""
    summary = format_summary(results)
    mlflow.log_metrics(pipeline_metrics(results))
    mlflow.log_text(summary + "\n", "summary.txt")
    dag = chart_in(mlflow.get_run(pipeline_run_id).data.tags.get(DESCRIPTION_TAG, ""))
    manifest = {"pipeline_run_id": pipeline_run_id, "dag": dag, "steps": [asdict(r) for r in results]}
    mlflow.log_dict(manifest, LINEAGE_FILE)
    return summary


def source_state() -> dict[str, str]:
    """Lineage tags shared by every step run of a pipeline: is the git tree dirty, which data."""
    tags = {}
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
    if status.returncode == 0:
        tags[GIT_DIRTY_TAG] = str(bool(status.stdout.strip())).lower()
    return tags | data_state()


def data_state() -> dict[str, str]:
    """The data version data.dvc pins, as tags: its md5 and, when recorded, where it came from."""
    tags = {}
    dvc_file = REPO_ROOT / DVC_FILE
    if dvc_file.is_file():
        with suppress(ValueError):
            pin = parse_pin(dvc_file.read_text())
            if pin.md5:
                tags[DATA_MD5_TAG] = pin.md5.removesuffix(".dir")  # the hex digest alone, as always tagged
            if pin.source:
                tags[DATA_SOURCE_TAG] = pin.source
    return tags
