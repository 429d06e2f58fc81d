"""The first screen of `make ui`: the experiment's pipeline runs, best first, with their headline
metrics and the parameters that tell them apart as columns.

MLflow 3.17's UI opens an experiment on its GenAI overview unless the URL says `workflowType=
machine_learning` (its experiment-kind tag is not read: the browser's workflow switch decides), and
shows no param or metric column until chosen. It opens a view saved on the experiment (the
`mlflow.sharedViewState.<key>` tag its Share button writes) from `?viewStateShareKey=<key>`: `make
ui` writes that view, then prints the URL that opens it. Sorted by a metric rather than by date,
the table lists runs flat (by date it nests a sweep's trials, folded, under the sweep's run)."""

from __future__ import annotations

import json

import mlflow
from mlflow.entities import Run

from sheldon.core.vocabulary import ALL_CACHED_TAG, DESCRIPTION_TAG, PIPELINE_RUNS, SHARED_VIEW_TAG

VIEW_KEY = "sheldon"
# The pipeline runs, a sweep's trials among them: no step's run, no sweep's, no re-run that reused
# every step (engine.mark_all_cached). Clearing the filter shows every run, nested.
TRAINED_PIPELINES = f"{PIPELINE_RUNS} AND tags.`{ALL_CACHED_TAG}` IS NULL"
DESCRIPTION = (
    "Runs of the pipeline (`make run`, main.py). Each `pipeline` run has a child run per step; a "
    "sweep's trials are `pipeline <overrides>` runs under the sweep's run; a re-run that reused "
    "every step is `pipeline (all cached)`. `make ui` opens on the pipeline runs, best first by "
    "config.yaml's sweep.metric, with each step's headline metric and the parameters that differ "
    "between them as columns; clear its filter to see every run, steps nested under pipelines."
)


def column(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: `params.`train_model.lr``."""
    return f"{kind}.`{name}`"


def pipeline_runs(experiment_id: str) -> list[Run]:
    """The experiment's pipeline runs (no step's run, no sweep's), newest first."""
    return mlflow.MlflowClient().search_runs([experiment_id], PIPELINE_RUNS, max_results=1000)


def runs_view(runs: list[Run], rank_by: str, descending: bool) -> dict:
    """The view of pipeline runs `runs`, best first by metric `rank_by`: their metrics (each
    step's headline, `evaluate.test_accuracy`) and the params whose values differ between them as
    columns."""
    metrics = sorted({name for run in runs for name in run.data.metrics})
    params = {name for run in runs for name in run.data.params}
    differ = sorted(name for name in params if len({run.data.params.get(name) for run in runs}) > 1)
    return {
        "searchFilter": TRAINED_PIPELINES,
        "orderByKey": column("metrics", rank_by),
        "orderByAsc": not descending,
        "selectedColumns": [
            *(column("metrics", name) for name in metrics),
            *(column("params", name) for name in differ),
        ],
    }


def open_runs_view(base_url: str, experiment_name: str, rank_by: str, descending: bool) -> str:
    """Save the view on experiment `experiment_name` (and, where it has none, a description of
    its runs) and return the URL that opens it; the UI's front page where there is no such
    experiment yet."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return base_url
    experiment_id = experiment.experiment_id
    view = runs_view(pipeline_runs(experiment_id), rank_by, descending)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + VIEW_KEY, json.dumps(view))
    if not experiment.tags.get(DESCRIPTION_TAG):
        client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, DESCRIPTION)
    query = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return f"{base_url}/#/experiments/{experiment_id}/runs?{query}"
