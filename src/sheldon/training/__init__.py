"""Training shared by the steps: train_model's loop and evaluate's inference.

    settings      what training computes, checked once
    device        the device, bf16 autocast, peak memory
    batches       mini-batches sliced on the device
    passes        one pass over the batches: train, validate, predict
    build         model, optimizer, LR schedule from `_target_` specs
    rng           seeding and the random state checkpoints keep
    checkpoints   save, load and restore a configuration's last epoch
    distributed   torchrun ranks, the process group, the launch
    loop          epochs, early stopping, the best epoch's weights

Imports inside the package name the module (sheldon.training.x), never a relative path: the step
cache follows those imports to hash the code a step depends on."""

from sheldon.training.batches import Batches, shard, to_tensors
from sheldon.training.build import build, build_model, build_training
from sheldon.training.checkpoints import (
    CHECKPOINT,
    TrainingState,
    checkpoint_folder,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from sheldon.training.device import Placement, autocast, bf16_enabled, peak_memory_mb, select_device
from sheldon.training.distributed import (
    World,
    check_processes,
    gather_objects,
    launch,
    max_processes,
    parallel,
    process_group,
)
from sheldon.training.loop import train
from sheldon.training.passes import Totals, evaluate_batches, predict, train_epoch
from sheldon.training.rng import rng_state, seed_everything, set_rng_state
from sheldon.training.settings import TrainingSettings

__all__ = [
    "CHECKPOINT",
    "Batches",
    "Placement",
    "TrainingSettings",
    "Totals",
    "TrainingState",
    "World",
    "autocast",
    "bf16_enabled",
    "build",
    "build_model",
    "build_training",
    "check_processes",
    "checkpoint_folder",
    "evaluate_batches",
    "gather_objects",
    "launch",
    "load_checkpoint",
    "max_processes",
    "parallel",
    "peak_memory_mb",
    "predict",
    "process_group",
    "restore",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "select_device",
    "set_rng_state",
    "shard",
    "to_tensors",
    "train",
    "train_epoch",
]
