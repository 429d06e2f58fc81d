"""test_model's parameters, read by the step (run.py) and by the pipeline before it launches
anything; config.yaml's section of the step holds their values."""

from __future__ import annotations

from dataclasses import dataclass

from sheldon.step.settings import StepSettings, artifact_input, parameter


@dataclass(frozen=True)
class Settings(StepSettings):
    """test_model's parameters; config.yaml's `test_model` section holds their values."""

    splits: str = artifact_input("MLflow URI of preprocess's splits artifact (its test split is scored)")
    model_name: str = parameter("", "the registered model whose champion is scored")
    source: str = parameter(
        "", "a dataset to score instead of the test split: a path, https://, s3://, package://"
    )
    format: str = parameter("auto", "the source's format: auto, npz, csv or images")
    label_column: str = parameter("label", "label column of a CSV source")

    def check_with_store(self) -> None:
        from sheldon.serving.registry import champion_uri  # the store's client: only once the store is open

        champion_uri(self.model_name)  # one line when the model or its champion is missing
