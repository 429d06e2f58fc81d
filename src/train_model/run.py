"""train_model: build the model, optimizer and LR schedule named in config (Hydra `_target_`),
train on the `splits` artifact with early stopping and a checkpoint every epoch, and log the best
epoch's model with mlflow.pytorch (an MLflow 3 logged model) and in W&B as a `model` artifact.
nproc_per_node > 1 re-launches this script under torchrun (DistributedDataParallel: gloo on CPU,
nccl on GPU); only rank 0 logs to MLflow and W&B."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sheldon.artifacts import fetch_artifact
from sheldon.cli import run_cli
from sheldon.datasets import load_split
from sheldon.errors import StepError, usable_folder
from sheldon.settings import SettingsParser, StepSettings, artifact_input, parameter
from sheldon.tracking import StepRun, missing_inputs, step_run
from sheldon.training import (
    CHECKPOINT,
    Placement,
    TrainingSettings,
    World,
    check_processes,
    checkpoint_folder,
    launch,
    load_checkpoint,
    peak_memory_mb,
    process_group,
    train,
)
from sheldon.vocabulary import CHECKPOINTS_TAG, DEVICE_TAG

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

STEP = "train_model"
# Parameters that change how a run is carried out, not what it computes: left out of the key
# that names a configuration's checkpoint folder.
NOT_IN_KEY = ("resume", "checkpoint_dir")


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


@dataclass(frozen=True)
class Plan:
    """The parameters of one training process, checked: what it computes, on which device, where
    its checkpoints go, and the checkpoint it resumes from."""

    settings: TrainingSettings
    placement: Placement
    checkpoints: Path
    resume_from: dict[str, Any] | None


def checkpoint_dir(args: Settings) -> Path:
    """This configuration's checkpoint folder, inside a checkpoint_dir known to be usable."""
    root = usable_folder("train_model.checkpoint_dir", args.checkpoint_dir)
    return checkpoint_folder(root, {k: v for k, v in vars(args).items() if k not in NOT_IN_KEY})


def check(args: Settings, world: World) -> Plan:
    """Every check on the parameters, each made once, before anything is fetched or trained."""
    settings = TrainingSettings.from_args(args)
    checkpoints = checkpoint_dir(args)
    placement = Placement.choose(settings.device, settings.bf16, world.local_rank)
    check_processes(args.nproc_per_node, settings.batch_size, placement.device)
    return Plan(settings, placement, checkpoints, load_checkpoint(checkpoints) if args.resume else None)


@contextmanager
def without_message(logger: str, prefix: str) -> Iterator[None]:
    """Silence one known message of a library's logger (and only it) while the block runs."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    logging.getLogger(logger).addFilter(keep)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(keep)


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

    plan = check(args, world)
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


def as_argv(args: Settings) -> list[str]:
    """The command line that parses back to `args` (structured values as JSON)."""
    argv = []
    for key, value in vars(args).items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else "" if value is None else str(value)
        argv += [f"--{key}", text]
    return argv


def main(args: Settings) -> None:
    world = World.from_env()
    if args.nproc_per_node > 1 and not world.distributed:
        try:
            if problem := missing_inputs(STEP, args.values(), args.inputs()):
                raise StepError(problem)
            check(args, world)
        except StepError:
            with step_run(STEP, args):  # recorded as a failed run of this step, like any failure
                raise
        launch(Path(__file__).resolve(), as_argv(args), args.nproc_per_node)
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
