"""The model registry: every model evaluate scores becomes a new version of
`evaluate.registered_model_name`, and two aliases say which version to use. `challenger` is the
latest candidate that did not win; `champion` is the one to serve, replaced only by a version that
passes `evaluate.min_accuracy` and beats it on the same test split, the champion scored again
there rather than trusted from its tags. (MLflow 3's aliases; no stages.)"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from sheldon.artifacts import logged_model_uri
from sheldon.cache import key_lock
from sheldon.errors import StepError

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    """What became of a new version: promoted to champion or not, and why, with both scores."""

    name: str
    version: int
    promoted: bool
    champion_score: float | None  # the champion it was compared with, scored again just now
    why: str

    def __str__(self) -> str:
        return f"{self.name} v{self.version}: {self.why}"


def register(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """Register the model at `model_uri` as a new version of `name` (made if new), tagged."""
    try:
        return mlflow.register_model(logged_model_uri(model_uri), name, tags=tags)
    except MlflowException as err:
        raise StepError(f"cannot register {model_uri} as {name!r}: {err.message}") from None


def version_by_alias(name: str, alias: str) -> ModelVersion | None:
    """The version of `name` that `alias` points at; None when there is none (or no such model)."""
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion_uri(name: str) -> str:
    """`models:/<name>@champion`, once it exists; StepError with one line when it does not."""
    try:
        mlflow.MlflowClient().get_registered_model(name)
    except MlflowException:
        raise StepError(
            f"no registered model {name!r}: run the pipeline; evaluate registers each model it scores"
        ) from None
    if version_by_alias(name, CHAMPION) is None:
        raise StepError(
            f"{name!r} has no champion yet: no version has passed evaluate.min_accuracy; "
            "run the pipeline until one does"
        )
    return f"models:/{name}@{CHAMPION}"


def promote_if_better(
    version: ModelVersion, score: float, min_score: float, score_of: Callable[[str], float]
) -> Decision:
    """Alias the new version `challenger`, then make it `champion` when its score passes
    `min_score` and beats the champion's, which `score_of(model URI)` measures again on the same
    split. Pipelines deciding at once (a parallel sweep) take turns."""
    client, name, number = mlflow.MlflowClient(), version.name, int(version.version)
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    with key_lock(f"registry-{digest}", f"another pipeline is deciding on a version of {name}: waiting"):
        client.set_registered_model_alias(name, CHALLENGER, str(number))
        current = version_by_alias(name, CHAMPION)
        theirs = score_of(f"models:/{name}/{current.version}") if current else None
        promoted = score >= min_score and (theirs is None or score > theirs)
        if score < min_score:
            why = f"not promoted: {score:.4f} is below evaluate.min_accuracy={min_score}"
        elif current is None:
            why = f"promoted to champion, the first ({score:.4f})"
        elif promoted:
            why = f"promoted to champion: {score:.4f} > champion v{current.version}'s {theirs:.4f}"
        else:
            why = f"kept champion v{current.version}: {theirs:.4f} >= {score:.4f}"
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, str(number))
            client.delete_registered_model_alias(name, CHALLENGER)  # it no longer challenges
        return Decision(name, number, promoted, theirs, why)
