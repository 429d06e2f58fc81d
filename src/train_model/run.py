"""train_model: build the model, optimizer and LR schedule named in config (Hydra `_target_`),
train on the `splits` artifact with early stopping and a checkpoint every epoch, and log the best
epoch's model with mlflow.pytorch (an MLflow 3 logged model) and in W&B as a `model` artifact.
nproc_per_node > 1 re-launches this script under torchrun (DistributedDataParallel: gloo on CPU,
nccl on GPU); only rank 0 logs to MLflow and W&B."""

from __future__ import annotations

import argparse
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

from sheldon.artifacts import fetch
from sheldon.cli import boolean, json_value, run_cli
from sheldon.datasets import load_split
from sheldon.errors import StepError, usable_folder
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

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

STEP = "train_model"
# Parameters that change how a run is carried out, not what it computes: left out of the key
# that names a configuration's checkpoint folder.
NOT_IN_KEY = ("resume", "checkpoint_dir")


@dataclass(frozen=True)
class Plan:
    """The parameters of one training process, checked: what it computes, on which device, where
    its checkpoints go, and the checkpoint it resumes from."""

    settings: TrainingSettings
    placement: Placement
    checkpoints: Path
    resume_from: dict[str, Any] | None


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """This configuration's checkpoint folder, inside a checkpoint_dir known to be usable."""
    root = usable_folder("train_model.checkpoint_dir", args.checkpoint_dir)
    return checkpoint_folder(root, {k: v for k, v in vars(args).items() if k not in NOT_IN_KEY})


def check(args: argparse.Namespace, world: World) -> Plan:
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


def fit_and_log(args: argparse.Namespace, world: World, run: StepRun | None) -> None:
    """Train in this process (one of several under torchrun); `run` is given on rank 0 only."""
    import mlflow

    plan = check(args, world)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with process_group(world, plan.placement.device):
        folder = run.fetch_input("splits", args.splits) if run else fetch(args.splits)
        train_xy, val_xy = load_split(folder, "train"), load_split(folder, "val")
        if run is not None:
            mlflow.set_tags(
                {"sheldon.checkpoints": str(plan.checkpoints), "sheldon.device": str(plan.placement.device)}
            )
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


def as_argv(args: argparse.Namespace) -> list[str]:
    """The command line that parses back to `args` (structured values as JSON)."""
    argv = []
    for key, value in vars(args).items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else "" if value is None else str(value)
        argv += [f"--{key}", text]
    return argv


def main(args: argparse.Namespace) -> None:
    world = World.from_env()
    if args.nproc_per_node > 1 and not world.distributed:
        try:
            if problem := missing_inputs(STEP, vars(args)):
                raise StepError(problem)
            check(args, world)
        except StepError:
            with step_run(STEP, vars(args)):  # recorded as a failed run of this step, like any failure
                raise
        launch(Path(__file__).resolve(), as_argv(args), args.nproc_per_node)
    elif world.rank == 0:
        with step_run(STEP, vars(args)) as run:  # which stops on a missing input
            fit_and_log(args, world, run)
    else:
        fit_and_log(args, world, None)


def optional_json(value: str) -> Any:
    """A structured parameter that may be unset ('' or null: Hydra's None)."""
    return None if value.strip().lower() in {"", "none", "null"} else json_value(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    arg = p.add_argument
    arg("--splits", default="", help="MLflow URI of preprocess's splits artifact (required)")
    arg("--epochs", type=int, default=8, help="most passes over the training split")
    arg("--batch_size", type=int, default=64, help="samples per optimizer step, over all processes")
    arg("--lr", type=float, default=3e-3, help="learning rate given to the optimizer")
    arg("--seed", type=int, default=42, help="seeds python, numpy, torch and the shuffling")
    arg("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu")
    arg("--bf16", default="auto", help="bf16 autocast: auto (on GPUs that support it), true or false")
    arg("--threads", type=int, default=1, help="CPU threads per process; 0 = PyTorch's default")
    arg("--patience", type=int, default=3, help="early stop after this many epochs without progress; 0 = off")
    arg("--grad_clip", type=float, default=0.0, help="clip the gradient norm to this; 0 = off")
    arg("--nproc_per_node", type=int, default=1, help="processes to train in (DDP under torchrun)")
    arg("--resume", type=boolean, default=False, help="continue from this configuration's last checkpoint")
    arg("--checkpoint_dir", default="checkpoints", help="checkpoint folder, relative to the repo root")
    arg("--model", type=json_value, required=True, help="model spec as JSON with _target_")
    arg("--optimizer", type=json_value, required=True, help="optimizer spec as JSON with _target_")
    arg("--scheduler", type=optional_json, default=None, help="LR schedule spec as JSON, or '' for none")
    return p


if __name__ == "__main__":
    run_cli(main, parser())
