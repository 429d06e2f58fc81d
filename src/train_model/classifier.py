"""The model train_model logs, as MLflow loads it: raw images in, classes and probabilities out.

MLflow runs this file to load the model (a model from code), with the network it holds, exported
by torch.export: scaling to [0, 1] as preprocess does, the network, softmax. It imports torch,
numpy, pandas and mlflow alone, so the model loads and predicts where sheldon is not installed.

Input: uint8 images, (N, height, width), the size the model was trained on (a tensor, or a JSON
list as `mlflow models serve` takes it). Output, a row per image: `class` (the most probable),
`probability` (its probability) and `probabilities` (one per class)."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

BATCH = 1024  # images a forward pass: memory stays flat whatever the request's size


class ImageClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        self.network = torch.export.load(context.artifacts["network"]).module()

    # The input is checked by the signature the model is logged with (np.ndarray: not by type hint).
    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        images = np.asarray(model_input)
        if images.ndim != 3 or len(images) == 0:
            raise MlflowException(
                f"expected a batch of one or more images (N, height, width), got shape {images.shape}",
                INVALID_PARAMETER_VALUE,
            )
        with torch.no_grad():
            probabilities = torch.cat(
                [self.network(torch.from_numpy(images[i : i + BATCH])) for i in range(0, len(images), BATCH)]
            ).numpy()
        return pd.DataFrame(
            {
                "class": probabilities.argmax(1),
                "probability": probabilities.max(1),
                "probabilities": list(probabilities),
            }
        )


mlflow.models.set_model(ImageClassifier())
