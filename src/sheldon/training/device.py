"""Where a process computes: its device, and bf16 autocast there."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from sheldon.core.errors import StepError, shorten

DEVICES = ("auto", "cuda", "mps", "cpu")
BF16_SETTINGS = ("auto", "true", "false")


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


@dataclass(frozen=True)
class Placement:
    """The device one training process uses and whether it computes in bf16 there."""

    device: torch.device
    bf16: bool

    @classmethod
    def choose(cls, device: str, bf16: str, local_rank: int = 0) -> Placement:
        """The `device` and `bf16` settings, checked against this machine and resolved."""
        chosen = select_device(device, local_rank)
        return cls(chosen, bf16_enabled(bf16, chosen))


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bf16 autocast when on; otherwise no context at all (entering a disabled one still costs)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
