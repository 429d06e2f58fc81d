"""The loops train_model and evaluate share, and the device they run on.

Batches are sliced from whole tensors that already sit on the device, so a step costs one
gather instead of a per-sample collate; running totals stay on the device and are read back
only when the progress bar redraws, so a GPU is never made to wait on the host."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from sheldon.errors import StepError, shorten

DEVICES = ("auto", "cuda", "mps", "cpu")
BF16_SETTINGS = ("auto", "true", "false")
REFRESH_SECONDS = 0.5  # how often the progress bar's loss and throughput are read back


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: CUDA, then Apple MPS, then CPU. A device that is asked for but absent is an error
    (training silently on the CPU instead would take hours and look like a hang)."""
    if name not in DEVICES:
        raise StepError(f"device={shorten(name)!r}: use one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StepError("device=cuda but PyTorch sees no CUDA GPU on this machine; use device=auto or cpu")
    if name == "mps" and not mps_available():
        raise StepError("device=mps but Apple MPS is not available on this machine; use device=auto or cpu")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def bf16_enabled(setting: str, device: torch.device) -> bool:
    """bf16 autocast: `auto` turns it on for GPUs that support it; `true`/`false` force it."""
    setting = str(setting).strip().lower()
    if setting not in BF16_SETTINGS:
        raise StepError(f"bf16={shorten(setting)!r}: use one of {', '.join(BF16_SETTINGS)}")
    if setting == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return setting == "true"


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bf16 autocast when on; otherwise no context at all (entering a disabled one still costs)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class Batches:
    """Mini-batches of (x, y) sliced from tensors on the device, shuffled per epoch from
    (seed, epoch) so a resumed run sees the same order. Under DistributedDataParallel each of
    `world` processes takes every world-th sample of each batch: the ranks' gradients, averaged
    by DDP, are the gradient of the whole batch, as in a single process."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        seed: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0
        # A last batch too small to give every process a sample is dropped (DDP needs all ranks
        # to take the same number of steps).
        full, rest = divmod(len(y), batch_size)
        self.steps = full + (rest >= world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.seed is None:
            order = None
        else:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(len(self.y), generator=generator).to(self.y.device)
        for step in range(self.steps):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            if order is None:  # evaluation: one process, or a shard of the data (see shard())
                yield self.x[batch], self.y[batch]
            else:
                index = order[batch][self.rank :: self.world]
                yield self.x[index], self.y[index]


def shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's contiguous share of an evaluation set (its totals are summed across ranks)."""
    lo, hi = len(y) * rank // world, len(y) * (rank + 1) // world
    return x[lo:hi], y[lo:hi]


class Totals:
    """Per-batch losses and logits, kept on the device until read: adding a batch costs no
    host-device sync and no kernel launch, which matters for small models on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.losses: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.sizes: list[int] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        # No kernel at all per batch: argmax, compare and sum wait until the totals are read
        # (the kept logits are a few bytes per sample).
        self.losses.append(loss.detach())
        self.logits.append(logits.detach())
        self.targets.append(y)
        self.sizes.append(len(y))

    def sums(self) -> torch.Tensor:
        """[loss sum, correct, samples] as one tensor on the device (what DDP all-reduces)."""
        if not self.sizes:
            return torch.zeros(3, dtype=self.dtype, device=self.device)
        sizes = torch.tensor(self.sizes, dtype=self.dtype, device=self.device)
        loss = (torch.stack(self.losses).to(self.dtype) * sizes).sum()
        correct = (torch.cat(self.logits).argmax(1) == torch.cat(self.targets)).sum().to(self.dtype)
        return torch.stack([loss, correct, sizes.sum()])

    def read(self, sums: torch.Tensor | None = None) -> tuple[float, float, int]:
        """(mean loss, accuracy, samples) as plain numbers: one transfer from the device."""
        loss, correct, seen = (self.sums() if sums is None else sums).tolist()
        return loss / max(seen, 1), correct / max(seen, 1), int(seen)


def train_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: nn.Module | None = None,
    bf16: bool = False,
    grad_clip: float = 0.0,
    bar: Any | None = None,
) -> Totals:
    """One pass of optimizer steps over `batches`; `bar` (tqdm) shows live loss and samples/s."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = batches.y.device
    totals = Totals(device)
    model.train()
    started = last_refresh = time.perf_counter()
    for x, y in batches:
        with autocast(device, bf16):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        totals.add(loss, logits, y)
        if bar is not None:
            bar.update(1)
            now = time.perf_counter()
            if now - last_refresh >= REFRESH_SECONDS:
                last_refresh = now
                mean_loss, accuracy, seen = totals.read()
                bar.set_postfix(
                    loss=f"{mean_loss:.4f}",
                    acc=f"{accuracy:.3f}",
                    samples_s=f"{seen * batches.world / (now - started):.0f}",
                    refresh=False,
                )
    return totals


def evaluate_batches(
    model: nn.Module, batches: Batches, *, loss_fn: nn.Module | None = None, bf16: bool = False
) -> Totals:
    """Loss and accuracy over `batches` without gradients."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = batches.y.device
    totals = Totals(device)
    model.eval()
    with torch.inference_mode(), autocast(device, bf16):
        for x, y in batches:
            logits = model(x)
            totals.add(loss_fn(logits, y), logits, y)
    return totals


def predict(
    model: nn.Module, x: torch.Tensor, batch_size: int, bf16: bool = False, bar: Any | None = None
) -> torch.Tensor:
    """Class probabilities (N, classes) as float32 on the device of `x`; `bar` (tqdm) counts samples."""
    model.eval()
    logits = []
    with torch.inference_mode(), autocast(x.device, bf16):
        for start in range(0, len(x), batch_size):
            logits.append(model(x[start : start + batch_size]).float())
            if bar is not None:
                bar.update(len(logits[-1]))  # a shape: no wait on the device
    return torch.cat(logits).softmax(1)


def peak_memory_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB (Linux, macOS)."""
    import resource
    import sys

    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10  # bytes on macOS, KiB on Linux
    return (
        max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        * scale
    )


def build(spec: dict[str, Any] | None, what: str, **kwargs: Any) -> Any:
    """Instantiate a `_target_` spec from config, naming the config key when it is wrong."""
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise StepError(f"train_model.{what} needs a _target_, got {shorten(spec)!r}")
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as err:
        reason = str(err).strip().splitlines()[0]
        raise StepError(f"cannot build train_model.{what} ({spec['_target_']}): {reason}") from None


def build_model(spec: dict[str, Any], input_shape: tuple[int, ...]) -> nn.Module:
    model = build(spec, "model")
    if not isinstance(model, nn.Module):
        raise StepError(f"train_model.model ({spec['_target_']}) is not a torch.nn.Module")
    with torch.no_grad():
        model(torch.zeros(2, *input_shape))  # materialise lazy layers before the optimizer sees them
    return model
