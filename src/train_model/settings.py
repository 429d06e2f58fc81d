"""train_model's parameters, read by the step (run.py) and by the pipeline before it launches
anything; config.yaml's section of the step holds their values. Declared here only: the training
library reads them as they are (sheldon.training.settings.TrainingSettings names what it reads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sheldon.core.errors import StepError, shorten
from sheldon.step.settings import StepSettings, artifact_input, parameter


@dataclass(frozen=True)
class Settings(StepSettings):
    """train_model's parameters; config.yaml's `train_model` section holds their values."""

    splits: str = artifact_input("MLflow URI of preprocess's splits artifact")
    epochs: int = parameter(8, "most passes over the training split (early stopping may end sooner)")
    batch_size: int = parameter(64, "samples per optimizer step, over all processes")
    lr: float = parameter(0.003, "learning rate given to the optimizer")
    seed: int = parameter(42, "seeds python, numpy, torch and the shuffling")
    device: str = parameter("auto", "auto (CUDA, then Apple MPS, then CPU), cuda, mps or cpu")
    bf16: str = parameter("auto", "bf16 autocast: auto (on GPUs that support it), true or false")
    threads: int = parameter(1, "CPU threads per process; 0 = PyTorch's default (one per core)")
    patience: int = parameter(3, "early stop after this many epochs without a better val_accuracy; 0 = off")
    grad_clip: float = parameter(0.0, "clip the gradient norm to this; 0 = off")
    nproc_per_node: int = parameter(1, ">1: DistributedDataParallel in that many processes under torchrun")
    resume: bool = parameter(False, "continue this configuration's run from its last checkpoint")
    checkpoint_dir: str = parameter("checkpoints", "checkpoint folder, relative to the repo root")
    model: dict[str, Any] = parameter(
        {"_target_": "sheldon.training.models.SmallCNN"}, "model spec (_target_)"
    )
    optimizer: dict[str, Any] = parameter({"_target_": "torch.optim.Adam"}, "optimizer spec (_target_)")
    scheduler: dict[str, Any] | None = parameter(None, "LR schedule spec (_target_); '' = constant lr")

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
