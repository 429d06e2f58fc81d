"""Moving bytes safely: fetch artifacts by URI, hash files, write atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from sheldon.errors import StepError

_CHUNK = 1 << 20


def fetch(uri: str) -> Path:
    """Download an MLflow artifact URI (runs:/, models:/, file:, s3:// ...) to a local path."""
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:
        raise StepError(f"cannot fetch input artifact {uri}: {err}") from None


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks so memory stays flat whatever its size."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds,
    so a reader never sees a partial file and a failure leaves the previous version intact."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def digest_path(path: Path) -> str:
    """Content digest of a file or a folder (names and bytes of every file in it)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\0".encode())
    return digest.hexdigest()
