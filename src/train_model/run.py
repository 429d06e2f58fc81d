"""train_model: build the model, optimizer and LR schedule named in config (Hydra `_target_`),
train on the `splits` artifact with early stopping and a checkpoint every epoch, and log the best
epoch's model with mlflow.pytorch (an MLflow 3 logged model) and in W&B as a `model` artifact.
nproc_per_node > 1 re-launches this script under torchrun (DistributedDataParallel: gloo on CPU,
nccl on GPU); only rank 0 logs to MLflow and W&B."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sheldon.artifacts import fetch_artifact
from sheldon.cli import run_cli
from sheldon.datasets import load_split
from sheldon.errors import StepError
from sheldon.settings import SettingsParser, StepSettings, artifact_input, as_argv, parameter
from sheldon.tracking import StepRun, missing_inputs, step_run, without_message
from sheldon.training import (
    CHECKPOINT,
    World,
    launch,
    peak_memory_mb,
    process_group,
    train,
)
from sheldon.training.plan import plan_training
from sheldon.vocabulary import CHECKPOINTS_TAG, DEVICE_TAG

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

STEP = "train_model"


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
    model: dict[str, Any] = parameter({"_target_": "sheldon.models.SmallCNN"}, "model spec (_target_)")
    optimizer: dict[str, Any] = parameter({"_target_": "torch.optim.Adam"}, "optimizer spec (_target_)")
    scheduler: dict[str, Any] | None = parameter(None, "LR schedule spec (_target_); '' = constant lr")


def log_model(model: nn.Module, example: np.ndarray) -> ModelInfo:
    """Log with signature and input example. Pickled (not pt2-exported) so evaluate and later
    training get a plain nn.Module; requirements pinned rather than inferred, which is slow."""
    import mlflow
    from mlflow.models import infer_signature

    model = model.cpu()
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    # Pickle is this step's choice, made above: MLflow's caution about it, repeated on every run,
    # would say nothing new. Its other warnings still show.
    with without_message("mlflow.pytorch", "Saving pytorch model by Pickle"):
        return mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, logits),
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            serialization_format="pickle",
        )


def fit_and_log(args: Settings, world: World, run: StepRun | None) -> None:
    """Train in this process (one of several under torchrun); `run` is given on rank 0 only."""
    import mlflow

    plan = plan_training(args, world)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with process_group(world, plan.placement.device):
        folder = run.fetch_input("splits", args.splits) if run else fetch_artifact(args.splits)
        train_xy, val_xy = load_split(folder, "train"), load_split(folder, "val")
        if run is not None:
            mlflow.set_tags({CHECKPOINTS_TAG: str(plan.checkpoints), DEVICE_TAG: str(plan.placement.device)})
        if plan.resume_from is not None:
            epoch = plan.resume_from["state"]["epoch"]
            print(f"resumed from {plan.checkpoints / CHECKPOINT} after epoch {epoch}", flush=True)
        model, history = train(
            train_xy,
            val_xy,
            plan.settings,
            placement=plan.placement,
            world=world,
            checkpoints=plan.checkpoints,
            resume_from=plan.resume_from,
            on_epoch=(lambda epoch, metrics: run.log_metrics(metrics, step=epoch)) if run else None,
        )
    if run is None:
        return
    logged = log_model(model, train_xy[0][:4])
    run.log_logged_model(logged.model_uri, "model")
    best = max(h["val_accuracy"] for h in history)
    best_epoch = 1 + [h["val_accuracy"] for h in history].index(best)
    run.log_metrics(
        {"best_epoch": best_epoch, "epochs_trained": len(history), "peak_memory_mb": peak_memory_mb()}
    )
    run.headline("best_val_accuracy", best)
    print(f"best validation accuracy: {best:.4f} (epoch {best_epoch} of {len(history)})")


def main(args: Settings) -> None:
    world = World.from_env()
    if args.nproc_per_node > 1 and not world.distributed:
        try:
            if problem := missing_inputs(STEP, args.values(), args.inputs()):
                raise StepError(problem)
            plan_training(args, world)
        except StepError:
            with step_run(STEP, args):  # recorded as a failed run of this step, like any failure
                raise
        launch(Path(__file__).resolve(), as_argv(vars(args)), args.nproc_per_node)
    elif world.rank == 0:
        with step_run(STEP, args) as run:  # which stops on a missing input
            fit_and_log(args, world, run)
    else:
        fit_and_log(args, world, None)


def warm_up() -> None:
    """Called ahead of the step when a pipeline starts its interpreter early (sheldon/prestart.py):
    torch's first optimizer imports its compiler stack, ~1 s here, the same on every run."""
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])


def parser() -> SettingsParser:
    return Settings.parser(STEP, __doc__)


if __name__ == "__main__":
    run_cli(main, parser())
