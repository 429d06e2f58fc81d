"""A step's data inputs as MLflow datasets (mlflow.data): what fills the runs table's Dataset
column and, through the metrics computed on them, a logged model's "Datasets used". An input is
an artifact another run logged (`runs:/<id>/<name>`), a source none of MLflow's dataset sources
resolve, hence ArtifactSource."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from sheldon.core.vocabulary import INPUT_DIGEST_TAG
from sheldon.step.artifacts import digest_path, fetch_artifact

DIGEST_CHARS = 36  # the longest digest MLflow stores; sheldon's are 64 hex characters


class ArtifactSource(DatasetSource):
    """An MLflow artifact URI (`runs:/<run id>/<artifact>`, or any URI MLflow downloads)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "mlflow_artifact"

    def load(self) -> Path:
        """The artifact, downloaded (into a folder removed when this process exits)."""
        return fetch_artifact(self.uri)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # never guessed from a raw source: sheldon names it

    @classmethod
    def _resolve(cls, raw_source: Any) -> ArtifactSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> ArtifactSource:
        return cls(source_dict["uri"])


def log_input_dataset(name: str, uri: str, fetched: Path) -> MetaDataset | None:
    """Log input `name`, read from `uri` and fetched to `fetched`, as a dataset of the active run
    and return it; None for a model (a folder with an MLmodel file), which is no dataset. Its
    digest is the content digest the pipeline tagged the run with (the one its producer recorded
    and the step cache keys on), or, for a step run by hand, that of what was fetched."""
    if (fetched / "MLmodel").is_file():
        return None
    tagged = mlflow.get_run(mlflow.active_run().info.run_id).data.tags.get(INPUT_DIGEST_TAG + name)
    digest = tagged or digest_path(fetched)
    dataset = MetaDataset(ArtifactSource(uri), name=name, digest=digest[:DIGEST_CHARS])
    mlflow.log_input(dataset)
    return dataset
