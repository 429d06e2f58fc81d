"""What a pipeline shows its user. Quiet by default: a line per step, then the summary; a step's
own output (its stdout), the step's command and inputs, and MLflow's INFO lines only with
main.verbose=true. Errors and warnings (stderr) always show. Progress bars only on a terminal;
tables as aligned text.
A sweep trial run in a worker process (joblib, Ray), whose lines would interleave with the
other trials', starts each of its lines, and its steps', with `[trial N] `."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from sheldon.core.vocabulary import OUTPUT_PREFIX_ENV, QUIET_ENV

_MLFLOW_LEVEL = "MLFLOW_LOGGING_LEVEL"  # read by MLflow as it loads, in each process


def set_verbose(verbose: bool) -> None:
    """The pipeline's choice (main.verbose), for this process and the steps it starts: they read
    QUIET_ENV, and MLflow, loading in each of them, its log level. A level of DEBUG asked for by
    hand stays."""
    if verbose:
        os.environ.pop(QUIET_ENV, None)
    else:
        os.environ[QUIET_ENV] = "1"
    if os.environ.get(_MLFLOW_LEVEL, "").upper() != "DEBUG":
        os.environ[_MLFLOW_LEVEL] = "INFO" if verbose else "WARNING"
    logging.getLogger("mlflow").setLevel(os.environ[_MLFLOW_LEVEL].upper())
    if not verbose and "mlflow" in sys.modules:  # a sweep's process, which registers its best trial
        drop_mlflow_news()


def drop_mlflow_news() -> None:
    """MLflow prints some news past its loggers' levels, to the stream they share ("Created version
    '2' of model ..."): its loggers write to stderr themselves, and that stream nowhere (its own
    switch, which MLflow turns back on after some calls, would not hold)."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    for handler in logging.getLogger("mlflow").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    MLFLOW_LOGGING_STREAM.write = len


def is_verbose() -> bool:
    """Whether to show what only main.verbose=true shows; a step run on its own shows it all."""
    return os.environ.get(QUIET_ENV) != "1"


class Prefixed(io.TextIOBase):
    """A text stream that starts every line written to it with `prefix`. Not a terminal, for
    what asks: a progress bar would interleave with the other trials' lines."""

    def __init__(self, stream: TextIO, prefix: str) -> None:
        self.stream, self.prefix, self._line_start = stream, prefix, True

    def write(self, text: str) -> int:
        pieces = text.split("\n")
        out = []
        for i, piece in enumerate(pieces):
            end = "\n" if i < len(pieces) - 1 else ""
            if piece or end:
                out.append((self.prefix if self._line_start else "") + piece + end)
                self._line_start = bool(end)
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    def __getattr__(self, name: str) -> object:  # `buffer` and the like: the stream's own
        return getattr(self.stream, name)


_unprefixed: list[TextIO] = []  # this process's stdout and stderr before any prefix


def prefix_output(prefix: str) -> None:
    """Start every line this process prints, and the processes it starts (OUTPUT_PREFIX_ENV),
    with `prefix`; a worker that runs another trial next takes that trial's prefix instead."""
    if not _unprefixed:
        _unprefixed.extend([sys.stdout, sys.stderr])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stdout, sys.stderr = (Prefixed(stream, prefix) for stream in _unprefixed)
    os.environ[OUTPUT_PREFIX_ENV] = prefix


def step_output() -> None:
    """In a step's process, as its pipeline asks: its lines prefixed with its trial, its stdout
    dropped by a quiet pipeline (stderr stays: errors, warnings, and progress bars on a terminal),
    and MLflow's INFO lines with it. Its own processes (torchrun's workers) inherit both."""
    if prefix := os.environ.get(OUTPUT_PREFIX_ENV):
        prefix_output(prefix)
    if is_verbose():
        return
    drop_mlflow_news()
    logging.getLogger("mlflow").setLevel(os.environ.get(_MLFLOW_LEVEL, "WARNING").upper())
    sys.stdout.flush()
    dropped = os.open(os.devnull, os.O_WRONLY)
    os.dup2(dropped, 1)
    os.close(dropped)


def text_table(rows: list[list[str]]) -> str:
    """Rows of cells as aligned columns, the first row a header ruled off with dashes: the
    pipeline's summary, a sweep's trials."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress(total: int | None, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on a terminal, gone once done in a quiet pipeline (its step leaves one line);
    none in a log file, where each redraw would be one more line."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty(), leave=is_verbose())


@contextmanager
def stages(total: int, desc: str) -> Iterator[Callable[[str], None]]:
    """A progress bar over a step's `total` stages: each call of the function it yields ends the
    stage under way and names the next one in the bar. Left where it stopped on an error."""
    with progress(total, desc, "stage") as bar:
        begun: list[str] = []

        def begin(name: str) -> None:
            if begun:
                bar.update()
            begun.append(name)
            bar.set_postfix_str(name)

        yield begin
        if begun:
            bar.update()
