"""A step's entry point: run its main with parsed arguments, a bad one refused, a StepError shown
as one line, a stop signal or its pipeline's death unwound, and exit with a code that says which."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from sheldon.core.errors import StepError
from sheldon.core.output import step_output
from sheldon.core.processes import PIPELINE_ENV, Interrupted, die_with_pipeline, raise_on_signals


def run_cli(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser) -> NoReturn:
    """Parse arguments, run the step, and turn a StepError into one line on stderr and exit 1.
    A stop signal, or the death of the pipeline that launched the step, unwinds the step
    (its runs closed, nothing half-written kept) and exits 128 + the signal's number. What it
    prints follows its pipeline's choice (sheldon/core/output.py)."""
    step_output()
    try:
        args = parser.parse_args()
    except (SystemExit, StepError) as refused:  # a bad parameter, or a rule between parameters
        if isinstance(refused, SystemExit) and not refused.code:  # --help
            raise
        from sheldon.step.tracking import discard_standalone_launch

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
