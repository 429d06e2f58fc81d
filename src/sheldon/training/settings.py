"""What training reads of train_model's settings. The parameters themselves (default, help, how
to read them, the checks that refuse a value training cannot use) are declared once, in
src/train_model/settings.py; the library cannot import a step, so it names here only what it reads."""

from __future__ import annotations

from typing import Any, Protocol


class TrainingSettings(Protocol):
    """train_model's settings as training sees them: read-only, as that frozen dataclass's fields."""

    @property
    def model(self) -> dict[str, Any]: ...
    @property
    def optimizer(self) -> dict[str, Any]: ...
    @property
    def scheduler(self) -> dict[str, Any] | None: ...
    @property
    def lr(self) -> float: ...
    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def bf16(self) -> str: ...
    @property
    def patience(self) -> int: ...
    @property
    def grad_clip(self) -> float: ...

    def values(self) -> dict[str, Any]:
        """Every setting by name, as a checkpoint records them."""
