"""Training in several processes: torchrun's ranks, their process group, and the launch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sheldon.core.errors import StepError
from sheldon.training.passes import Totals


@dataclass(frozen=True, kw_only=True)
class World:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        return cls(
            rank=int(env.get("RANK", 0)),
            size=int(env.get("WORLD_SIZE", 1)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
        )

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


def parallel(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """`model` as it is trained: wrapped by DistributedDataParallel across several processes."""
    if not world.distributed:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def gather_objects(world: World, obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (just [obj] in a single process)."""
    if not world.distributed:
        return [obj]
    gathered: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def launch(script: Path, argv: list[str], nproc: int) -> None:
    """Run `script` with `argv` in `nproc` processes under torchrun (PyTorch's own launcher)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    # One thread per process and core: more would fight over the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, max_processes(torch.device("cpu")) // nproc)))
    command = ["--standalone", f"--nproc_per_node={nproc}", str(script), *argv]
    try:
        torchrun(get_args_parser().parse_args(command))
    except ChildFailedError as err:
        rank, failure = min(err.failures.items())
        raise StepError(
            f"training process {rank} of {nproc} failed (exit code {failure.exitcode}); its error is above"
        ) from None
