"""One pass over the batches, shared by train_model and evaluate: training, validation and
prediction. Running totals stay on the device and are read back only when the progress bar
redraws, so a GPU is never made to wait on the host."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from sheldon.training.batches import Batches
from sheldon.training.device import autocast

REFRESH_SECONDS = 0.5  # how often the progress bar's loss and throughput are read back


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
