"""What training computes: made from train_model's settings (src/train_model/settings.py), which
refuse values it cannot train with."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TrainingSettings:
    """The train_model parameters that shape the result."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    lr: float
    epochs: int
    batch_size: int
    seed: int
    device: str = "auto"
    bf16: str = "auto"
    patience: int = 0
    grad_clip: float = 0.0

    @classmethod
    def from_args(cls, args: object) -> TrainingSettings:
        """From anything that holds these fields as attributes: parsed arguments, a step's settings."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
