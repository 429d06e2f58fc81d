"""The model, optimizer and LR schedule that config names by Hydra `_target_`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from sheldon.core.errors import StepError, first_line

if TYPE_CHECKING:
    from sheldon.training.settings import TrainingSettings


def build(spec: dict[str, Any], what: str, **kwargs: Any) -> Any:
    """Instantiate a `_target_` spec from config, naming the config key when it is wrong."""
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as err:
        reason = first_line(err)
        raise StepError(f"cannot build train_model.{what} ({spec['_target_']}): {reason}") from None


def build_model(spec: dict[str, Any], input_shape: tuple[int, ...]) -> nn.Module:
    model = build(spec, "model")
    if not isinstance(model, nn.Module):
        raise StepError(f"train_model.model ({spec['_target_']}) is not a torch.nn.Module")
    with torch.no_grad():
        model(torch.zeros(2, *input_shape))  # materialise lazy layers before the optimizer sees them
    return model


def build_training(
    settings: TrainingSettings, input_shape: tuple[int, ...], device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, Any | None]:
    """The model on `device`, its optimizer at `settings.lr`, and the LR schedule (None: constant)."""
    model = build_model(settings.model, input_shape).to(device)
    optimizer = build(settings.optimizer, "optimizer", params=model.parameters(), lr=settings.lr)
    scheduler = (
        build(settings.scheduler, "scheduler", optimizer=optimizer)
        if settings.scheduler is not None
        else None
    )
    return model, optimizer, scheduler
