"""The model registry: every model evaluate scores becomes a new version of
`evaluate.registered_model_name`, and two aliases say which version to use. `challenger` is the
latest candidate that did not win; `champion` is the one to serve, replaced only by a version that
passes `evaluate.min_accuracy` and beats it by the configured margin (`Margin`) on the same test
split, the champion scored again there rather than trusted from its tags. (MLflow 3's aliases; no
stages.)"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from sheldon.core.errors import StepError
from sheldon.core.locks import machine_lock
from sheldon.core.vocabulary import TEST_SPLIT_TAG
from sheldon.step.artifacts import logged_model_uri

CHAMPION, CHALLENGER = "champion", "challenger"
# Accuracies are ratios of counts: their difference can miss a margin it equals by a rounding error.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Margin:
    """By how much a challenger must beat the champion, as MLflow's MetricThreshold says it: a
    gain of at least `absolute`, and at least `relative` times the champion's score. Always a
    gain: with both 0, any better score wins and a tie does not."""

    absolute: float = 0.0
    relative: float = 0.0

    def needed(self, theirs: float) -> float:
        return max(self.absolute, self.relative * abs(theirs))

    def __str__(self) -> str:
        parts = [f">= +{self.absolute:g} absolute"] if self.absolute else []
        parts += [f">= +{self.relative:.2%} relative"] if self.relative else []
        return f"rule: {' and '.join(parts) or '> the champion'}"


@dataclass(frozen=True)
class Rival:
    """The champion a new version faces: its score on this test split, and the digest of the split
    it was registered on when that is another one ('' when the same)."""

    version: int
    score: float
    other_split: str = ""


def judge(score: float, min_score: float, champion: Rival | None, margin: Margin) -> tuple[bool, str]:
    """Whether a version scoring `score` becomes champion, and why, in one line."""
    if score < min_score:
        return False, f"not champion: {score:.4f} is below evaluate.min_accuracy={min_score}"
    if champion is None:
        return True, f"champion, the first: {score:.4f} passes evaluate.min_accuracy={min_score}"
    gain = score - champion.score
    wins = gain > TOLERANCE and gain >= margin.needed(champion.score) - TOLERANCE
    versus = f"v{champion.version}'s {champion.score:.4f}"
    why = (
        f"champion: {score:.4f} beats {versus} by {gain:+.4f} ({margin})"
        if wins
        else f"not champion: {score:.4f} against {versus} is {gain:+.4f} ({margin})"
    )
    if champion.other_split:
        why += (
            f"; different test data: v{champion.version} was registered on split "
            f"{champion.other_split[:12]}, and scored again on this one"
        )
    return wins, why


@dataclass(frozen=True, kw_only=True)
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
    version: ModelVersion,
    score: float,
    min_score: float,
    margin: Margin,
    test_split: str,
    score_of: Callable[[str], float],
) -> Decision:
    """Alias the new version `challenger`, then make it `champion` when `judge` says so: its score
    passes `min_score` and beats the champion's by `margin`, the champion scored again by
    `score_of(model URI)` on the test split whose digest is `test_split` (the digest each version
    is tagged with). Pipelines deciding at once (a parallel sweep) take turns."""
    client, name, number = mlflow.MlflowClient(), version.name, int(version.version)
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    with machine_lock(f"registry-{digest}", f"another pipeline is deciding on a version of {name}: waiting"):
        client.set_registered_model_alias(name, CHALLENGER, str(number))
        current = version_by_alias(name, CHAMPION)
        rival = None
        if current is not None:
            theirs = current.tags.get(TEST_SPLIT_TAG) or "(not recorded)"
            score_now = score_of(f"models:/{name}/{current.version}")
            rival = Rival(int(current.version), score_now, "" if theirs == test_split else theirs)
        promoted, why = judge(score, min_score, rival, margin)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, str(number))
            client.delete_registered_model_alias(name, CHALLENGER)  # it no longer challenges
        return Decision(
            name=name,
            version=number,
            promoted=promoted,
            champion_score=rival.score if rival else None,
            why=why,
        )
