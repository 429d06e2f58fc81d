"""What training computes, checked once: a TrainingSettings that exists holds valid values."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sheldon.errors import StepError, shorten


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

    def __post_init__(self) -> None:
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise StepError(f"train_model.{name} must be positive, got {getattr(self, name)}")
        if self.patience < 0:
            raise StepError(f"train_model.patience must be 0 (off) or positive, got {self.patience}")
        if self.grad_clip < 0:
            raise StepError(f"train_model.grad_clip must be 0 (off) or positive, got {self.grad_clip}")
        specs = {"model": self.model, "optimizer": self.optimizer}
        if self.scheduler is not None:  # None: a constant lr
            specs["scheduler"] = self.scheduler
        for what, spec in specs.items():
            if not isinstance(spec, dict) or "_target_" not in spec:
                raise StepError(f"train_model.{what} needs a _target_, got {shorten(spec)!r}")
