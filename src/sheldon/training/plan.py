"""One training process's plan, made from train_model's settings before anything is fetched or
trained: on which device, its checkpoint folder, and the checkpoint it resumes from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sheldon.core.errors import usable_folder
from sheldon.training.checkpoints import checkpoint_folder, load_checkpoint
from sheldon.training.device import Placement
from sheldon.training.distributed import World, check_processes

# Parameters that change how a run is carried out, not what it computes: left out of the key
# that names a configuration's checkpoint folder.
NOT_IN_KEY = ("resume", "checkpoint_dir")


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    placement: Placement
    checkpoints: Path
    resume_from: dict[str, Any] | None


def checkpoint_dir(args: Any) -> Path:
    """This configuration's checkpoint folder (`args`: train_model's settings), inside a
    checkpoint_dir known to be usable."""
    root = usable_folder("train_model.checkpoint_dir", args.checkpoint_dir)
    return checkpoint_folder(root, {k: v for k, v in vars(args).items() if k not in NOT_IN_KEY})


def plan_training(args: Any, world: World) -> TrainingPlan:
    """Every check on train_model's settings (`args`) that needs this machine, each made once."""
    checkpoints = checkpoint_dir(args)
    placement = Placement.choose(args.device, args.bf16, world.local_rank)
    check_processes(args.nproc_per_node, args.batch_size, placement.device)
    return TrainingPlan(
        placement=placement,
        checkpoints=checkpoints,
        resume_from=load_checkpoint(checkpoints) if args.resume else None,
    )
