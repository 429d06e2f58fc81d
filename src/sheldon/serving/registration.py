"""Registering a scored model: one path from an evaluate run to a registered version, whoever asks.
A pipeline's evaluate registers the model it just scored; in a sweep, evaluate only scores, and the
sweep, when it ends, registers its best trial's model (engine/sweep.py), so that a sweep adds one version,
not one a trial. Everything needed is read from the evaluate run: its settings (parameters), its
scores (the `evaluation` artifact) and the model it scored."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import mlflow

from sheldon.core.errors import StepError
from sheldon.core.vocabulary import (
    NOTE_TAG,
    PARENT_RUN_TAG,
    REGISTERED_TAG,
    TEST_SPLIT_TAG,
    parse_runs_uri,
    runs_uri,
)
from sheldon.serving.model_card import publish_card
from sheldon.serving.registry import CHALLENGER, CHAMPION, Decision, Margin, promote_if_better, register
from sheldon.step.artifacts import fetch_artifact
from sheldon.step.tracking import StepRun, model_lineage, wandb_reference

EVALUATION = "evaluation"  # evaluate's artifact (MLflow and W&B, type `evaluation`): its scores
SCORES = "scores.json"  # in it: test metrics, per-class rows, confusion matrix, test split digest


def evaluation_uri(evaluate_run_id: str) -> str:
    return runs_uri(evaluate_run_id, f"{EVALUATION}/{SCORES}")


def scorer_on(splits_uri: str) -> Callable[[str], float]:
    """Test accuracy of the model at a URI on the test split of the splits at `splits_uri`, which
    are fetched the first time it is asked (only a champion to beat needs them)."""
    from sheldon.data.datasets import load_split, raw_images
    from sheldon.serving.predict import accuracy, load_model

    test: list = []

    def score_of(model_uri: str) -> float:
        if not test:
            x, y = load_split(fetch_artifact(splits_uri), "test")
            test.extend([raw_images(x), y])
        return accuracy(load_model(fetch_artifact(model_uri)), *test)

    return score_of


def register_evaluated(
    evaluate_run_id: str, origin: str, score_of: Callable[[str], float] | None = None
) -> Decision:
    """Register the model evaluate run `evaluate_run_id` scored as a new version of its
    `registered_model_name`, tagged with its lineage and test split, make it champion or not
    (registry.promote_if_better: the champion is scored again by `score_of(model URI)`, by default
    on the run's own test split), and write the decision on the run and the version: the run's
    note, the version's description and model card (model_card.py). `origin` says in the
    description why this model was registered (a pipeline, a sweep's best trial)."""
    client = mlflow.MlflowClient()
    run = client.get_run(evaluate_run_id)
    params: dict[str, Any] = run.data.params
    name = params.get("registered_model_name", "")
    if not name:
        raise StepError(f"evaluate run {evaluate_run_id} has no registered_model_name to register as")
    scores = mlflow.artifacts.load_dict(evaluation_uri(evaluate_run_id))
    model_uri = params["model"]
    train_run = parse_runs_uri(model_uri)
    tags = model_lineage(train_run[0]) if train_run else {}
    tags |= {
        "sheldon.pipeline_run": run.data.tags.get(PARENT_RUN_TAG, tags.get("sheldon.pipeline_run", "")),
        "sheldon.evaluate_run": evaluate_run_id,
        TEST_SPLIT_TAG: scores["test_split"],
    }
    if reference := wandb_reference(model_uri):
        tags["wandb.artifact"] = reference  # the same model in W&B
    version = register(model_uri, name, {k: v for k, v in tags.items() if v})
    margin = Margin(
        float(params["promote_min_absolute_change"]), float(params["promote_min_relative_change"])
    )
    decision = promote_if_better(
        version,
        scores["metrics"]["test_accuracy"],
        float(params["min_accuracy"]),
        margin,
        scores["test_split"],
        score_of or scorer_on(params["splits"]),
    )
    if decision.champion_score is not None:
        client.log_metric(evaluate_run_id, "champion_test_accuracy", decision.champion_score)
    client.set_tag(evaluate_run_id, REGISTERED_TAG, f"{name}/{decision.version}")
    client.set_tag(evaluate_run_id, NOTE_TAG, str(decision))
    card = publish_card(decision, evaluate_run_id, scores["per_class"], scores["confusion"], origin)
    print(f"model card: {card}")
    return decision


def log_registration(run: StepRun, decision: Decision, model_uri: str) -> None:
    """W&B's side of the registered version the model became (register_evaluated writes
    MLflow's): the decision as the run's note, the version in its config, and, online, the
    model's artifact linked to W&B's registry."""
    run.wandb.summary["note"] = str(decision)
    alias = CHAMPION if decision.promoted else CHALLENGER
    reference = wandb_reference(model_uri)
    run.wandb.config.update(
        {
            "registered_model": decision.name,
            "registered_version": decision.version,
            "alias": alias,
            "wandb_model": reference,
        },
        allow_val_change=True,
    )
    if run.wandb.settings.mode == "online" and reference:
        try:
            run.wandb.link_artifact(
                run.wandb.use_artifact(reference), f"model-registry/{decision.name}", [alias]
            )
        except Exception as err:  # e.g. the model was logged without W&B
            print(f"W&B: cannot link {reference} to the registry ({err})", file=sys.stderr)
