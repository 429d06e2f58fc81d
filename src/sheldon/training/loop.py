"""The training loop: epochs of training and validation, early stopping, the best epoch's
weights, and a checkpoint after every epoch."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from sheldon.core.output import progress
from sheldon.training.batches import Batches, shard, to_tensors
from sheldon.training.build import build_training
from sheldon.training.checkpoints import restore, save_checkpoint
from sheldon.training.device import Placement
from sheldon.training.distributed import World, parallel
from sheldon.training.passes import Totals, evaluate_batches, train_epoch
from sheldon.training.rng import seed_everything
from sheldon.training.settings import TrainingSettings


@dataclass
class TrainingState:
    """Where training stands: what a checkpoint holds beyond weights and RNG states."""

    epoch: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = 0
    since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def add(self, metrics: dict[str, float]) -> bool:
        """Count a finished epoch; True when its validation accuracy is the best so far."""
        self.epoch += 1
        self.history.append(metrics)
        if metrics["val_accuracy"] > self.best_accuracy:
            self.best_accuracy, self.best_epoch, self.since_best = metrics["val_accuracy"], self.epoch, 0
            return True
        self.since_best += 1
        return False

    def stopped_early(self, patience: int) -> bool:
        return patience > 0 and self.since_best >= patience


def train(
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    settings: TrainingSettings,
    *,
    placement: Placement | None = None,
    world: World | None = None,
    checkpoints: Path | None = None,
    resume_from: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train and return the model holding the best validation epoch's weights, and the history.

    `world` defaults to a single process, `placement` to the one `settings` choose. A checkpoint
    is written to the folder `checkpoints` after every epoch; `resume_from`, a loaded checkpoint,
    continues where it stopped. Early stopping ends training after `patience` epochs without a
    better validation accuracy."""
    world = world or World()
    placement = placement or Placement.choose(settings.device, settings.bf16, world.local_rank)
    device = placement.device
    seed_everything(settings.seed)
    module, optimizer, scheduler = build_training(settings, train_xy[0].shape[1:], device)
    if resume_from is None:
        state, best_weights = TrainingState(), copy.deepcopy(module.state_dict())
    else:
        saved_state, best_weights = restore(resume_from, module, optimizer, scheduler, world)
        state = TrainingState(**saved_state)
        if on_epoch is not None:  # the new run shows the whole curve
            for epoch, metrics in enumerate(state.history, 1):
                on_epoch(epoch, metrics)
    model = parallel(module, device, world)
    batches = Batches(
        *to_tensors(train_xy, device), settings.batch_size, settings.seed, world.rank, world.size
    )
    val = Batches(*shard(*to_tensors(val_xy, device), world.rank, world.size), max(settings.batch_size, 256))

    while state.epoch < settings.epochs and not state.stopped_early(settings.patience):
        epoch = state.epoch + 1
        batches.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        with epoch_bar(world, len(batches), f"epoch {epoch}/{settings.epochs}") as bar:
            trained = train_epoch(
                model, batches, optimizer, bf16=placement.bf16, grad_clip=settings.grad_clip, bar=bar
            )
            train_seconds = time.perf_counter() - started
            validated = evaluate_batches(module, val, bf16=placement.bf16)
            metrics = epoch_metrics(world, trained, validated, lr, train_seconds, bar)
        if scheduler is not None:
            scheduler.step()
        metrics["epoch_seconds"] = time.perf_counter() - started
        if state.add(metrics):
            best_weights = copy.deepcopy(module.state_dict())
        if checkpoints is not None:
            save_checkpoint(
                checkpoints,
                world,
                model=module,
                optimizer=optimizer,
                scheduler=scheduler,
                best_weights=best_weights,
                state=asdict(state),
                settings=settings.values(),
            )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    if state.stopped_early(settings.patience):
        print(f"early stop after epoch {state.epoch}: val_accuracy not better for {settings.patience} epochs")
    module.load_state_dict(best_weights)
    return module.eval(), state.history


def epoch_metrics(
    world: World, trained: Totals, validated: Totals, lr: float, train_seconds: float, bar: Any | None
) -> dict[str, float]:
    """An epoch's losses and accuracies over every process, its lr and its training throughput;
    the bar shows them once the epoch is done."""
    train_loss, train_acc, seen = world.read(trained)
    val_loss, val_acc, _ = world.read(validated)
    if bar is not None:
        bar.set_postfix(
            loss=f"{train_loss:.4f}", val_acc=f"{val_acc:.3f}", samples_s=f"{seen / train_seconds:.0f}"
        )
    return {
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": lr,
        "samples_per_s": seen / train_seconds,
    }


@contextmanager
def epoch_bar(world: World, total: int, desc: str) -> Iterator[Any]:
    """The progress bar of one epoch, on rank 0 only (the other ranks would print the same); off
    a terminal, where there is no bar, a line once the epoch is done."""
    if world.rank != 0:
        yield None
        return
    with progress(total, desc, "batch") as bar:
        yield bar
    if bar.disable:
        print(f"{desc}: {bar.postfix}", flush=True)
