"""Training, in train_model's process: its loop, plan, models, checkpoints, devices and DDP.

    settings      what training reads of train_model's settings (declared in its settings.py)
    plan          one training process's device, checkpoints, resume point
    device        the device and bf16 autocast
    batches       mini-batches sliced on the device
    passes        one pass over the batches: train, validate, predict
    build         model, optimizer, LR schedule from `_target_` specs
    rng           seeding and the random state checkpoints keep
    checkpoints   save, load and restore a configuration's last epoch
    distributed   torchrun ranks, the process group, the launch
    loop          epochs, early stopping, the best epoch's weights

Imports inside the package name the module (sheldon.training.x), never a relative path: the step
cache follows those imports to hash the code a step depends on. Below: what the steps, tests and
benchmarks use; the rest is reached through its module."""

from sheldon.training.batches import Batches, shard
from sheldon.training.build import build_model
from sheldon.training.checkpoints import CHECKPOINT, checkpoint_folder, load_checkpoint
from sheldon.training.device import Placement, autocast, bf16_enabled, select_device
from sheldon.training.distributed import World, check_processes, launch, process_group
from sheldon.training.loop import train
from sheldon.training.passes import predict, train_epoch
from sheldon.training.settings import TrainingSettings

__all__ = [
    "CHECKPOINT",
    "Batches",
    "Placement",
    "TrainingSettings",
    "World",
    "autocast",
    "bf16_enabled",
    "build_model",
    "check_processes",
    "checkpoint_folder",
    "launch",
    "load_checkpoint",
    "predict",
    "process_group",
    "select_device",
    "shard",
    "train",
    "train_epoch",
]
