"""train_model: build the model, optimizer and LR schedule named in config (Hydra `_target_`),
train on the `splits` artifact with early stopping and a checkpoint every epoch, and log the best
epoch's model with mlflow.pytorch (an MLflow 3 logged model) and in W&B as a `model` artifact.
nproc_per_node > 1 re-launches this script under torchrun (DistributedDataParallel: gloo on CPU,
nccl on GPU); only rank 0 logs to MLflow and W&B."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sheldon.artifacts import atomic_path, fetch
from sheldon.cli import boolean, json_value, progress, run_cli
from sheldon.datasets import load_split
from sheldon.errors import StepError, shorten, usable_folder
from sheldon.paths import repo_path
from sheldon.tracking import StepRun, missing_inputs, step_run
from sheldon.training import (
    Batches,
    Totals,
    bf16_enabled,
    build,
    build_model,
    evaluate_batches,
    peak_memory_mb,
    seed_everything,
    select_device,
    shard,
    train_epoch,
)

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

STEP = "train_model"
CHECKPOINT = "last.pt"
# Parameters that change how a run is carried out, not what it computes: left out of the key
# that names a configuration's checkpoint folder.
NOT_IN_KEY = ("resume", "checkpoint_dir")


@dataclass(frozen=True)
class Settings:
    """What training computes: the train_model parameters that shape the result."""

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
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def check(self) -> None:
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise StepError(f"train_model.{name} must be positive, got {getattr(self, name)}")
        if self.patience < 0:
            raise StepError(f"train_model.patience must be 0 (off) or positive, got {self.patience}")
        if self.grad_clip < 0:
            raise StepError(f"train_model.grad_clip must be 0 (off) or positive, got {self.grad_clip}")


@dataclass(frozen=True)
class World:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def read(self, totals: Totals) -> tuple[float, float, int]:
        """(mean loss, accuracy, samples) over every process's share."""
        sums = totals.sums()
        if self.distributed:
            torch.distributed.all_reduce(sums)
        return totals.read(sums)


def max_processes(device: torch.device) -> int:
    """How many training processes this machine can hold: one per GPU, or per usable CPU core."""
    if device.type == "cuda":
        return torch.cuda.device_count()
    if device.type == "mps":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_processes(nproc: int, batch_size: int, device: torch.device) -> None:
    if nproc < 1:
        raise StepError(f"train_model.nproc_per_node must be 1 or more, got {nproc}")
    allowed = max_processes(device)
    if nproc > allowed:
        unit = "GPU" if device.type == "cuda" else "MPS device" if device.type == "mps" else "CPU core"
        raise StepError(
            f"train_model.nproc_per_node={nproc} but this machine allows at most {allowed} "
            f"(one process per {unit}); lower nproc_per_node"
        )
    if batch_size < nproc:
        raise StepError(
            f"train_model.batch_size={batch_size} is smaller than nproc_per_node={nproc}: "
            "every process needs at least one sample per step"
        )


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """The folder of this configuration's checkpoints: <checkpoint_dir>/<hash of the parameters
    and input URI>, so a resume never picks up the checkpoint of another configuration."""
    params = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_KEY}
    key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return repo_path(args.checkpoint_dir) / key


def check_resume(folder: Path) -> None:
    if not (folder / CHECKPOINT).is_file():
        raise StepError(
            f"train_model.resume=true but there is no checkpoint for this configuration in {folder}; "
            "run it once without resume (any change of parameters or input is a new configuration)"
        )


def check(args: argparse.Namespace, world: World) -> torch.device:
    """Every check on the parameters, before anything is fetched or trained; returns the device."""
    if problem := missing_inputs(STEP, vars(args)):
        raise StepError(problem)
    Settings.from_args(args).check()
    usable_folder("train_model.checkpoint_dir", args.checkpoint_dir)
    device = select_device(args.device, world.local_rank)
    bf16_enabled(args.bf16, device)
    check_processes(args.nproc_per_node, args.batch_size, device)
    if args.resume:
        check_resume(checkpoint_dir(args))
    return device


@dataclass
class State:
    """Everything a checkpoint holds beyond the weights: where training stands."""

    epoch: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = 0
    since_best: int = 0
    history: list[dict[str, float]] | None = None


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, **content: Any) -> None:
    """Write atomically: a crash while saving leaves the previous epoch's checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Read on the CPU (RNG states must stay there; load_state_dict moves weights to the device)."""
    check_resume(folder)
    try:
        return torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=False)
    except Exception as err:
        path = folder / CHECKPOINT
        raise StepError(f"cannot read checkpoint {path}: {shorten(err)}; delete it to start over") from None


def to_tensors(xy: tuple[np.ndarray, np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(xy[0]).to(device), torch.from_numpy(xy[1]).to(device)


def train(
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    settings: Settings,
    *,
    checkpoints: Path | None = None,
    resume: bool = False,
    world: World = World(),
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train and return the model holding the best validation epoch's weights, and the history.

    A checkpoint is written to `checkpoints` after every epoch; `resume` continues from it.
    Early stopping ends training after `patience` epochs without a better validation accuracy."""
    settings.check()
    device = select_device(settings.device, world.local_rank)
    bf16 = bf16_enabled(settings.bf16, device)
    seed_everything(settings.seed)
    module = build_model(settings.model, train_xy[0].shape[1:]).to(device)
    optimizer = build(settings.optimizer, "optimizer", params=module.parameters(), lr=settings.lr)
    scheduler = (
        build(settings.scheduler, "scheduler", optimizer=optimizer)
        if settings.scheduler is not None
        else None
    )
    state = State(history=[])
    if resume:
        saved = load_checkpoint(checkpoints)
        module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state, best_weights = State(**saved["state"]), saved["best_weights"]
        set_rng_state(saved["rng"][world.rank])
        print(f"resumed from {checkpoints / CHECKPOINT} after epoch {state.epoch}", flush=True)
        for epoch, metrics in enumerate(state.history, 1):  # the new run shows the whole curve
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    else:
        best_weights = copy.deepcopy(module.state_dict())
    model = (
        nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
        if world.distributed
        else module
    )
    batches = Batches(
        *to_tensors(train_xy, device), settings.batch_size, settings.seed, world.rank, world.size
    )
    val = Batches(*shard(*to_tensors(val_xy, device), world.rank, world.size), max(settings.batch_size, 256))

    def stopped_early() -> bool:
        return settings.patience > 0 and state.since_best >= settings.patience

    while state.epoch < settings.epochs and not stopped_early():
        epoch = state.epoch + 1
        batches.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        with epoch_bar(world, len(batches), f"epoch {epoch}/{settings.epochs}") as bar:
            trained = train_epoch(model, batches, optimizer, bf16=bf16, grad_clip=settings.grad_clip, bar=bar)
            train_seconds = time.perf_counter() - started
            train_loss, train_acc, seen = world.read(trained)
            val_loss, val_acc, _ = world.read(evaluate_batches(module, val, bf16=bf16))
            if bar is not None:
                bar.set_postfix(
                    loss=f"{train_loss:.4f}",
                    val_acc=f"{val_acc:.3f}",
                    samples_s=f"{seen / train_seconds:.0f}",
                )
        if scheduler is not None:
            scheduler.step()
        metrics = {
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lr,
            "samples_per_s": seen / train_seconds,
            "epoch_seconds": time.perf_counter() - started,
        }
        state.epoch = epoch
        state.history.append(metrics)
        if val_acc > state.best_accuracy:
            state.best_accuracy, state.best_epoch, state.since_best = val_acc, epoch, 0
            best_weights = copy.deepcopy(module.state_dict())
        else:
            state.since_best += 1
        if checkpoints is not None:
            rngs = gather_objects(world, rng_state())  # each rank's dropout stream, to resume exactly
            if world.rank == 0:
                save_checkpoint(
                    checkpoints / CHECKPOINT,
                    model=module.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict() if scheduler is not None else None,
                    best_weights=best_weights,
                    state=asdict(state),
                    rng=rngs,
                    settings=asdict(settings),
                )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    if stopped_early():
        print(f"early stop after epoch {state.epoch}: val_accuracy not better for {settings.patience} epochs")
    module.load_state_dict(best_weights)
    return module.eval(), state.history


@contextmanager
def epoch_bar(world: World, total: int, desc: str) -> Iterator[Any]:
    """The progress bar of one epoch, on rank 0 only (the other ranks would print the same)."""
    if world.rank != 0:
        yield None
        return
    with progress(total, desc, "batch") as bar:
        yield bar


def gather_objects(world: World, obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (just [obj] in a single process)."""
    if not world.distributed:
        return [obj]
    gathered: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the torchrun processes (nccl between GPUs, gloo on CPU); nothing in a single process."""
    if not world.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


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

    device = check(args, world)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    checkpoints = checkpoint_dir(args)
    with process_group(world, device):
        folder = run.fetch_input("splits", args.splits) if run else fetch(args.splits)
        train_xy, val_xy = load_split(folder, "train"), load_split(folder, "val")
        if run is not None:
            mlflow.set_tags({"sheldon.checkpoints": str(checkpoints), "sheldon.device": str(device)})
        model, history = train(
            train_xy,
            val_xy,
            Settings.from_args(args),
            checkpoints=checkpoints,
            resume=args.resume,
            world=world,
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


def launch_workers(args: argparse.Namespace) -> None:
    """Run this script in nproc_per_node processes under torchrun (PyTorch's own launcher)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    nproc = args.nproc_per_node
    # One thread per process and core: more would fight over the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, max_processes(torch.device("cpu")) // nproc)))
    command = ["--standalone", f"--nproc_per_node={nproc}", str(Path(__file__).resolve()), *as_argv(args)]
    try:
        torchrun(get_args_parser().parse_args(command))
    except ChildFailedError as err:
        rank, failure = min(err.failures.items())
        raise StepError(
            f"training process {rank} of {nproc} failed (exit code {failure.exitcode}); its error is above"
        ) from None


def main(args: argparse.Namespace) -> None:
    world = World.from_env()
    if args.nproc_per_node > 1 and not world.distributed:
        try:
            check(args, world)
        except StepError:
            with step_run(STEP, vars(args)):  # recorded as a failed run of this step, like any failure
                raise
        launch_workers(args)
    elif world.rank == 0:
        with step_run(STEP, vars(args)) as run:
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
