"""evaluate's parameters, read by the step (run.py) and by the pipeline before it launches
anything; config.yaml's section of the step holds their values."""

from __future__ import annotations

from dataclasses import dataclass

from sheldon.core.errors import StepError
from sheldon.step.parsers import fraction
from sheldon.step.settings import StepSettings, artifact_input, parameter


@dataclass(frozen=True)
class Settings(StepSettings):
    """evaluate's parameters; config.yaml's `evaluate` section holds their values."""

    model: str = artifact_input("MLflow URI of train_model's model")
    splits: str = artifact_input("MLflow URI of preprocess's splits artifact")
    batch_size: int = parameter(512, "samples per inference batch")
    num_classes: int = parameter(10, "classes shown in the metrics")
    min_accuracy: float = parameter(
        0.0,
        "the step fails below this test accuracy (0 to 1), and no version below it is champion",
        parse=fraction,
    )
    misclassified: int = parameter(32, "misclassified test images shown in the grid")
    registered_model_name: str = parameter(
        "", "registered model the scored model becomes a version of; '' = none"
    )
    promote_min_absolute_change: float = parameter(
        0.0,
        "a new version becomes champion only with a test accuracy at least this much higher",
        parse=fraction,
    )
    promote_min_relative_change: float = parameter(
        0.0,
        "... and higher by at least this share of the champion's (0.01: 1%); both 0: any gain wins",
        parse=fraction,
    )

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise StepError(f"evaluate.batch_size must be positive, got {self.batch_size}")
