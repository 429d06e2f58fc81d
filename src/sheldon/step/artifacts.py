"""Moving bytes safely: fetch artifacts by URI, hash files, write atomically."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import mlflow

from sheldon.core.errors import StepError
from sheldon.core.processes import PIPELINE_ENV
from sheldon.core.vocabulary import parse_runs_uri

_CHUNK = 1 << 20


_by_hand: list[tempfile.TemporaryDirectory] = []  # a step started by hand: its inputs, removed at exit
_fetched: list[Path] = []  # the folders this process downloaded into, removed when it exits


def fetch_artifact(uri: str) -> Path:
    """Download an MLflow artifact URI (runs:/, models:/, file:, s3:// ...) to a local path, in a
    folder of its own under `inputs_folder()`, removed when this process exits (and by the
    pipeline when the step ends, were this process killed). MLflow's default, a new temporary
    folder nobody removes, would leave every step's inputs behind: the splits, the model, a step."""
    try:
        folder = inputs_folder()
        folder.mkdir(parents=True, exist_ok=True)
        if not _fetched:
            atexit.register(_remove_fetched)
        _fetched.append(Path(tempfile.mkdtemp(dir=folder)))
        # A logged model straight from where it lies: through runs:/, MLflow first asks for it among
        # the run's artifacts, which a server with an object store answers with errors it retries
        # for ~4 min before MLflow looks beside the run.
        source = logged_model_uri(uri)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(_fetched[-1])))
    except Exception as err:
        raise StepError(f"cannot fetch input artifact {uri}: {err}") from None


def logged_model_uri(model_uri: str) -> str:
    """`models:/<model id>` of the logged model a `runs:/<run id>/<name>` URI names (MLflow 3
    keeps logged models beside a run's artifacts, not among them); other URIs as they are."""
    parsed = parse_runs_uri(model_uri)
    if parsed:
        run_id, name = parsed
        found = mlflow.search_logged_models(
            filter_string=f"source_run_id = '{run_id}' AND name = '{name}'", output_format="list"
        )
        if len(found) == 1:
            return f"models:/{found[0].model_id}"
    return model_uri


def logged_model_id(model_uri: str) -> str | None:
    """The id of the MLflow 3 logged model a `runs:/` or `models:/<model id>` URI names; None for
    other URIs (a registered version, a folder)."""
    from mlflow.store.artifact.utils.models import _parse_model_id_if_present

    return _parse_model_id_if_present(logged_model_uri(model_uri))


def _remove_fetched() -> None:
    """This process's downloads, and its run's inputs folder once no other process (a DDP rank)
    has one there."""
    for folder in _fetched:
        shutil.rmtree(folder, ignore_errors=True)
        with suppress(OSError):
            folder.parent.rmdir()


def inputs_root() -> Path:
    """The folder of the inputs folders of launched steps, one per run."""
    return Path(tempfile.gettempdir()) / "sheldon-inputs"


def inputs_folder(run_id: str | None = None) -> Path:
    """Where a step's inputs are downloaded: for a step a pipeline launched, a folder named after
    the step's run (this process's, or `run_id`), which the pipeline removes when the step ends,
    however it ends; for a step started by hand, a temporary folder removed when it exits."""
    run_id = run_id or (os.environ.get("MLFLOW_RUN_ID") if os.environ.get(PIPELINE_ENV) else None)
    if run_id:
        return inputs_root() / run_id
    if not _by_hand:
        _by_hand.append(tempfile.TemporaryDirectory(prefix="sheldon-inputs-"))
    return Path(_by_hand[0].name)


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks so memory stays flat whatever its size."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class FileDigest:
    """The sha256 of a complete file, computed on a background thread at idle priority: it takes
    only CPU that nothing else wants, while the caller goes on (a download's checks, DVC's commit
    and push). Whoever asks for the value finishes the rest in its own thread, at its own priority.
    (Hashing while a fast transfer still writes slows the transfer, even at idle priority.)"""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._handle = open(self._path, "rb", buffering=0)  # noqa: SIM115 (closed by _hash)
        self._sha = hashlib.sha256()
        self._wanted = threading.Event()
        self._cancelled = threading.Event()
        self._value: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._background, name=f"sha256 {path}", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop hashing (the file is being thrown away)."""
        self._cancelled.set()

    def hexdigest(self) -> str:
        self._wanted.set()
        self._thread.join()  # it stops at the next chunk and leaves the rest to this thread
        if self._cancelled.is_set():
            raise StepError(f"the sha256 of {self._path.name} was cancelled")
        if self._error is None and self._value is None:
            try:
                self._value = self._hash(until_wanted=False)
            except OSError as err:
                self._error = err
        if self._error is not None:
            raise StepError(f"cannot hash {self._path.name}: {self._error}")
        return self._value

    def _background(self) -> None:
        with suppress(AttributeError, OSError):  # Linux: this thread alone gets idle priority
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        try:
            self._value = self._hash(until_wanted=True)
        except BaseException as err:  # reported by hexdigest(), in the caller's thread
            self._error = err

    def _hash(self, until_wanted: bool) -> str | None:
        """Hash on from where the hash stands: the digest at the end of the file, or None when
        cancelled or (with `until_wanted`) when a caller takes over."""
        try:
            while not self._cancelled.is_set() and not (until_wanted and self._wanted.is_set()):
                chunk = self._handle.read(_CHUNK)
                if not chunk:
                    self._handle.close()
                    return self._sha.hexdigest()
                self._sha.update(chunk)
            if self._cancelled.is_set():
                self._handle.close()
            return None
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
