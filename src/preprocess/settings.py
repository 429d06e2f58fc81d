"""preprocess's parameters, read by the step (run.py) and by the pipeline before it launches
anything; config.yaml's section of the step holds their values."""

from __future__ import annotations

from dataclasses import dataclass

from sheldon.data.datasets import Split
from sheldon.step.settings import StepSettings, artifact_input, parameter


@dataclass(frozen=True)
class Settings(StepSettings):
    """preprocess's parameters; config.yaml's `preprocess` section holds their values."""

    raw_data: str = artifact_input("MLflow URI of download_dataset's raw_data artifact")
    val_size: float = parameter(0.15, "fraction of samples for validation")
    test_size: float = parameter(0.15, "fraction of samples for test")
    num_classes: int = parameter(10, "labels must lie in 0..num_classes-1")
    seed: int = parameter(42, "seed of the stratified split")

    def __post_init__(self) -> None:
        Split(self.val_size, self.test_size, self.num_classes)  # refuses sizes it cannot split by
