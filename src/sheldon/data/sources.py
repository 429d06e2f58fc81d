"""Fetching a dataset from where a team keeps it, and unpacking it safely.

A source is a URI: http(s) (streamed with retries, backoff and Range resume), a local path or
file://, or s3:// and any other store fsspec knows (the filesystem layer DVC itself uses;
credentials come from the store's usual environment variables or profile). Bytes always land in
a path the caller chose (a staging folder), never straight where a reader looks."""

from __future__ import annotations

import shutil
import stat
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from sheldon.core.errors import StepError, first_line, shorten
from sheldon.core.output import progress
from sheldon.core.paths import repo_path
from sheldon.data.datasets import PACKAGED, PACKAGED_SCHEME, load_packaged, save_npz
from sheldon.step.artifacts import FileDigest

# 512 KiB: on loopback it streams faster and steadier than 1 MiB (median 0.33 s against 0.52 s for
# 542 MB, benchmarks/download.py's setting); memory stays flat, and a read that a dropped connection
# interrupts loses at most this much (the resume asks for it again).
CHUNK = 512 << 10
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class Transfer:
    """How patient a download is: `timeout` bounds the connect and each wait for data (seconds);
    a failed attempt is retried `retries` times, waiting backoff, 2*backoff, 4*backoff ..."""

    timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0


@dataclass(frozen=True)
class Downloaded:
    """What a download produced: a file (with its sha256, hashed in the background) or a folder."""

    path: Path
    size: int
    digest: FileDigest | None  # None for a folder

    @property
    def sha256(self) -> str | None:
        """The file's sha256, once the background hash has caught up (None for a folder)."""
        return self.digest.hexdigest() if self.digest else None


DEFAULT_TRANSFER = Transfer()


class _Retryable(Exception):
    """A failure worth another attempt: a 5xx answer or a body cut short."""


def source_name(uri: str) -> str:
    """The file name a source would have on disk: what a packaged dataset is saved as, else the
    last segment of its path."""
    if uri.startswith(PACKAGED_SCHEME):
        return PACKAGED.get(uri.removeprefix(PACKAGED_SCHEME), "packaged.npz")
    path = unquote(urlparse(uri).path) if "://" in uri else uri
    return PurePosixPath(path.rstrip("/")).name or "download"


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def download(uri: str, target: Path, transfer: Transfer = DEFAULT_TRANSFER) -> Downloaded:
    """Copy the data `uri` names to `target` (which must not exist yet). The one place a data URI
    is decided: package://<dataset> (a dataset an installed package ships, saved as .npz),
    http(s)://, a path (relative to the repo root, as every path in config.yaml) or file://, and
    any other scheme fsspec knows (s3://, gs://, ...)."""
    if uri.startswith(PACKAGED_SCHEME):
        save_npz(load_packaged(uri.removeprefix(PACKAGED_SCHEME)), target)  # an unknown name: one line
        return Downloaded(target, target.stat().st_size, FileDigest(target))
    scheme = urlparse(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        return download_http(uri, target, transfer)
    if scheme in ("", "file"):
        return _copy_local(Path(unquote(urlparse(uri).path)) if scheme else repo_path(uri), target)
    return _copy_fsspec(uri, target)


def download_http(url: str, target: Path, transfer: Transfer = DEFAULT_TRANSFER) -> Downloaded:
    """Stream `url` into `target`; an attempt that fails mid-body resumes with a Range request."""
    import requests

    session = requests.Session()
    failures = 0
    with _receive(target) as out:
        while True:
            try:
                _http_attempt(session, url, out, transfer.timeout)
                break
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,  # body cut short: resume
                _Retryable,
            ) as err:
                failures += 1
                if failures > transfer.retries:
                    raise StepError(
                        f"cannot download {url}: {_describe(err, transfer.timeout)} "
                        f"(gave up after {failures} attempts)"
                    ) from None
                time.sleep(transfer.backoff * 2 ** (failures - 1))
    return Downloaded(target, target.stat().st_size, FileDigest(target))


@contextmanager
def _receive(target: Path) -> Iterator[BinaryIO]:
    """A new file at `target` for the block to write; if the block fails, no file is left. It
    stays open for every attempt: reopening it with truncation would make ext4 flush it all to
    disk on close (its guard for rewrite-in-place), a second pass over the bytes."""
    with open(target, "xb") as out:
        try:
            yield out
        except BaseException:
            target.unlink(missing_ok=True)
            raise


def _http_attempt(session, url: str, out: BinaryIO, timeout: float) -> None:
    """One GET into `out`: a Range GET for the rest when part of the file is already there."""
    have = out.tell()
    headers = {"Accept-Encoding": "identity"}  # the file's own bytes, so Range offsets match them
    if have:
        headers["Range"] = f"bytes={have}-"
    with session.get(url, stream=True, timeout=(timeout, timeout), headers=headers) as response:
        if response.status_code == 416 and have:  # nothing left past what we have: complete
            return
        if response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code} {response.reason}")
        if response.status_code >= 400:
            raise StepError(f"cannot download {url}: HTTP {response.status_code} {response.reason}")
        resumed = response.status_code == 206
        if have and not resumed:  # the server ignored the Range: the whole file comes again
            out.seek(0)
            out.truncate()
        length = response.headers.get("Content-Length")
        total = out.tell() + int(length) if length and length.isdigit() else None
        with progress(total, source_name(url), "B") as bar:
            bar.update(out.tell())
            _write_chunks(response.iter_content(CHUNK), out, bar)
    if total is not None and out.tell() < total:
        raise _Retryable(f"connection closed after {out.tell():,} of {total:,} bytes")


def _write_chunks(chunks: Iterable[bytes], out: BinaryIO, bar) -> None:
    for chunk in chunks:
        out.write(chunk)
        bar.update(len(chunk))


def _copy_stream(src: BinaryIO, target: Path, size: int | None, name: str) -> Downloaded:
    """Copy an open binary stream to `target` in chunks."""
    with _receive(target) as out, progress(size, name, "B") as bar:
        _write_chunks(iter(partial(src.read, CHUNK), b""), out, bar)
    return Downloaded(target, target.stat().st_size, FileDigest(target))


def _describe(err: Exception, timeout: float) -> str:
    """One line for a failed attempt, instead of urllib3's nested reprs."""
    import requests

    text = str(err)
    if isinstance(err, requests.ConnectTimeout):
        return f"no connection within {timeout:g} s"
    if isinstance(err, requests.ReadTimeout) or "Read timed out" in text:
        return f"the transfer stalled (no data for {timeout:g} s)"
    if "IncompleteRead" in text or "Connection broken" in text:
        return "the connection dropped mid-transfer"
    if isinstance(err, requests.ConnectionError):
        if "NameResolution" in text or "Name or service not known" in text:
            return "unknown host"
        if "refused" in text:
            return "connection refused (is the host up?)"
        return "cannot connect"
    return text


def _copy_local(path: Path, target: Path) -> Downloaded:
    if not path.exists():
        raise StepError(f"data source {path} does not exist")
    if path.is_dir():
        shutil.copytree(path, target)
        return Downloaded(target, sum(f.stat().st_size for f in target.rglob("*") if f.is_file()), None)
    with open(path, "rb") as src:
        return _copy_stream(src, target, path.stat().st_size, path.name)


def _copy_fsspec(uri: str, target: Path) -> Downloaded:
    """Object stores (s3://, gs://, az:// ...) through fsspec, streamed in chunks."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as err:
        raise StepError(f"cannot read {uri}: {first_line(err)}") from None
    try:
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(target), recursive=True)
            return Downloaded(target, sum(f.stat().st_size for f in target.rglob("*") if f.is_file()), None)
        with fs.open(path, "rb", block_size=CHUNK) as src:
            return _copy_stream(src, target, fs.size(path), source_name(uri))
    except FileNotFoundError:
        raise StepError(f"cannot read {uri}: no such object") from None
    except PermissionError:
        raise StepError(
            f"cannot read {uri}: access denied (credentials come from the environment or profile, "
            "e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
        ) from None
    except Exception as err:  # each store has its own errors; all mean this source is unusable
        raise StepError(f"cannot read {uri}: {type(err).__name__}: {first_line(err)}") from None


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a .zip, .tar, .tar.gz or .tgz into `dest`, refusing any entry that would land
    outside it (absolute path, `..`) and any link or device; a corrupt archive is refused too."""
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name
    try:
        if name.lower().endswith(".zip"):
            _unzip(archive, dest)
        else:
            _untar(archive, dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise StepError(f"{name} is not a readable archive: {err}") from None
    return dest


def _safe_target(dest: Path, entry: str, archive: str) -> Path:
    parts = PurePosixPath(entry.replace("\\", "/")).parts
    if entry.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        raise StepError(f"{archive} is unsafe: entry {shorten(entry)!r} would land outside the target folder")
    return dest.joinpath(*parts)


def _unzip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = _safe_target(dest, info.filename, archive.name)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise StepError(f"{archive.name} is unsafe: entry {shorten(info.filename)!r} is a link")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)


def _untar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            target = _safe_target(dest, member.name, archive.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            else:
                kind = "a link" if member.issym() or member.islnk() else "not a regular file"
                raise StepError(f"{archive.name} is unsafe: entry {shorten(member.name)!r} is {kind}")
