"""Moving bytes safely: fetch artifacts by URI, hash files, write atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


class FileDigest:
    """The sha256 of a file that is still being written, computed on a background thread that
    trails the writer through the page cache. The thread runs at idle priority, so it only takes
    CPU that nothing else wants and never slows the transfer it trails; whoever asks for the value
    takes over the rest at its own priority. Memory stays at one chunk.

    The writer calls `grew(size)` after bytes reach the file, `restart()` if it truncates the file,
    and `finish(size)` when it is complete; `hexdigest()` waits for the result."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._changed = threading.Condition()
        self._written = 0  # bytes the writer has put in the file
        self._complete = False
        self._generation = 0  # bumped by restart(): what was hashed so far no longer counts
        self._cancelled = False
        self._wanted = False  # a caller waits for the value: it finishes the hash itself
        self._sha, self._hashed, self._hashed_generation = hashlib.sha256(), 0, 0
        self._handle = open(self._path, "rb", buffering=0)  # noqa: SIM115 (closed by _hash)
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._trail, name=f"sha256 {self._path.name}", daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, path: Path) -> FileDigest:
        """The digest of a complete file, hashed in the background."""
        digest = cls(path)
        digest.finish(Path(path).stat().st_size)
        return digest

    def grew(self, size: int) -> None:
        with self._changed:
            self._written = size
            self._changed.notify()

    def restart(self) -> None:
        with self._changed:
            self._written, self._generation = 0, self._generation + 1
            self._changed.notify()

    def finish(self, size: int) -> None:
        with self._changed:
            self._written, self._complete = size, True
            self._changed.notify()

    def cancel(self) -> None:
        """Stop hashing (the file is being thrown away)."""
        with self._changed:
            self._cancelled = True
            self._changed.notify()

    def hexdigest(self) -> str:
        with self._changed:
            self._wanted = True
            self._changed.notify()
        self._thread.join()  # it stops at the next chunk and leaves the rest to this thread
        if self._error is None and self._value is None and not self._cancelled:
            try:
                self._value = self._hash(handing_over=False)
            except OSError as err:
                self._error = err
        if self._error is not None:
            raise StepError(f"cannot hash {self._path.name}: {self._error}")
        if self._value is None:
            raise StepError(f"the sha256 of {self._path.name} was cancelled")
        return self._value

    def _trail(self) -> None:
        with suppress(AttributeError, OSError):  # Linux: this thread alone gets idle priority
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        try:
            self._value = self._hash(handing_over=True)
        except BaseException as err:  # reported by hexdigest(), in the caller's thread
            self._error = err

    def _hash(self, handing_over: bool) -> str | None:
        """Hash what the writer has written until the file is complete (the digest), cancelled
        (None), or, when `handing_over`, until a caller wants the value (None: it goes on)."""
        try:
            while True:
                with self._changed:
                    while not (
                        self._cancelled
                        or (handing_over and self._wanted)
                        or self._generation != self._hashed_generation
                        or self._hashed < self._written
                        or self._complete
                    ):
                        self._changed.wait()
                    if handing_over and self._wanted and not self._cancelled:
                        return None
                    if self._cancelled:
                        self._handle.close()
                        return None
                    if self._generation != self._hashed_generation:
                        self._sha, self._hashed = hashlib.sha256(), 0
                        self._hashed_generation = self._generation
                        self._handle.seek(0)
                        continue
                    available, complete = self._written, self._complete
                if self._hashed >= available and complete:
                    self._handle.close()
                    return self._sha.hexdigest()
                chunk = self._handle.read(min(_CHUNK, available - self._hashed))
                if not chunk:
                    raise OSError(f"the file ended after {self._hashed:,} of {available:,} bytes")
                self._sha.update(chunk)
                self._hashed += len(chunk)
        except BaseException:
            self._handle.close()
            raise


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
