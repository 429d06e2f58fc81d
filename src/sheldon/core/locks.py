"""Machine-wide locks between the processes of pipelines that run at once."""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def machine_lock(key: str, waiting: str) -> Iterator[None]:
    """Hold the machine-wide lock named `key` (a step's cache key, a registered model's name),
    so that pipelines running at once (Hydra's joblib launcher) take turns: the second finds what
    the first made. Released when the process ends, however it ends. `waiting`: what a process
    that has to wait for it says."""
    folder = Path(tempfile.gettempdir()) / "sheldon-locks"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{key}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  ({waiting})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
