"""train_model's settings as the real config gives them, and a model's accuracy: for the step's
tests and the end-to-end ones."""

from __future__ import annotations

import torch
from helpers.checkout import REPO
from helpers.project import load_step
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sheldon.training import TrainingSettings, predict

train_model = load_step("train_model")


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def section(*overrides: str) -> dict:
    values = OmegaConf.to_container(composed(*overrides).train_model, resolve=True)
    values.pop("inputs")
    return values


def settings(*overrides: str, **changes) -> TrainingSettings:
    """The real config's train_model settings, shrunk: CPU, 2 epochs unless changed."""
    return train_model.Settings(**(section(*overrides) | {"device": "cpu", "epochs": 2} | changes))


def accuracy(model, xy) -> float:
    x, y = xy
    return float((predict(model, torch.from_numpy(x), 256).argmax(1).numpy() == y).mean())
