"""How a step's settings read their command-line values: the parse functions a setting's type
does not imply (booleans as Hydra and MLflow spell them, fractions, JSON subtrees, optional values)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sheldon.core.errors import shorten

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
