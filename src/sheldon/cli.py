"""What every step's run.py shares: typed argument parsing and one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from sheldon.errors import StepError, shorten
from sheldon.output import is_verbose, step_output
from sheldon.processes import PIPELINE_ENV, Interrupted, die_with_pipeline, raise_on_signals

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off", "none", "null", ""}


def boolean(value: str | bool) -> bool:
    """Parse a command-line boolean the way Hydra and MLflow spell them (true, 'True', 1, no...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().strip("'\"").lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {shorten(value)!r}")


def fraction(value: str | float) -> float:
    """A number from 0 to 1: an accuracy, a share of the samples."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {shorten(value)!r}")
    return number


def json_value(value: str) -> Any:
    """Parse a structured parameter (a config subtree such as a `_target_` spec) passed as JSON."""
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected JSON, got {shorten(value)!r} ({err.msg})") from None


def optional_str(value: str) -> str | None:
    """A string parameter where '' or 'null' (Hydra's None) means unset."""
    return None if value.strip().lower() in {"", "none", "null"} else value


def optional_json(value: str) -> Any:
    """A structured parameter that may be unset ('' or null: Hydra's None)."""
    return None if optional_str(value) is None else json_value(value)


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


def run_cli(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser) -> NoReturn:
    """Parse arguments, run the step, and turn a StepError into one line on stderr and exit 1.
    A stop signal, or the death of the pipeline that launched the step, unwinds the step
    (its runs closed, nothing half-written kept) and exits 128 + the signal's number. What it
    prints follows its pipeline's choice (sheldon/output.py)."""
    step_output()
    try:
        args = parser.parse_args()
    except (SystemExit, StepError) as refused:  # a bad parameter, or a rule between parameters
        if isinstance(refused, SystemExit) and not refused.code:  # --help
            raise
        from sheldon.tracking import discard_standalone_launch

        discard_standalone_launch()  # one line, and no stray run
        if isinstance(refused, StepError):
            print(f"error: {refused}", file=sys.stderr)
            sys.exit(2)
        raise
    raise_on_signals()
    die_with_pipeline()
    try:
        main(args)
    except StepError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as stop:
        if not os.environ.get(PIPELINE_ENV):  # a pipeline's step: the pipeline names the user's signal
            print(f"error: {stop}: the step stopped without keeping partial output", file=sys.stderr)
        sys.exit(stop.exit_code)
    sys.exit(0)
