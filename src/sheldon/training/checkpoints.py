"""A configuration's checkpoint, rewritten after every epoch: weights, optimizer, schedule, the
best epoch's weights, where training stands and every process's RNG state."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sheldon.core.errors import StepError, shorten
from sheldon.training.distributed import World, gather_objects
from sheldon.training.rng import rng_state, set_rng_state

CHECKPOINT = "last.pt"


def checkpoint_folder(root: Path, params: Mapping[str, Any]) -> Path:
    """<root>/<hash of `params`>: each configuration (parameters and input URI) has its own folder,
    so a resume never picks up the checkpoint of another configuration."""
    text = json.dumps(dict(params), sort_keys=True, default=str)
    return root / hashlib.sha256(text.encode()).hexdigest()[:16]


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Read on the CPU (RNG states must stay there; load_state_dict moves weights to the device)."""
    path = folder / CHECKPOINT
    if not path.is_file():
        raise StepError(
            f"train_model.resume=true but there is no checkpoint for this configuration in {folder}; "
            "run it once without resume (any change of parameters or input is a new configuration)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise StepError(f"cannot read checkpoint {path}: {shorten(err)}; delete it to start over") from None


def restore(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    world: World,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Put a loaded checkpoint back in place; returns where training stood and the best weights."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"][world.rank])
    return saved["state"], saved["best_weights"]


def save_checkpoint(
    folder: Path,
    world: World,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    best_weights: dict[str, Any],
    state: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> None:
    """Written by rank 0, atomically: a crash while saving leaves the previous epoch's intact."""
    from sheldon.step.artifacts import atomic_path  # its module imports mlflow, which training never needs

    rngs = gather_objects(world, rng_state())  # each rank's dropout stream, to resume exactly
    if world.rank != 0:
        return
    with atomic_path(folder / CHECKPOINT) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "best_weights": best_weights,
                "state": dict(state),
                "rng": rngs,
                "settings": dict(settings),
            },
            tmp,
        )
