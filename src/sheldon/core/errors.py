"""The error a user can fix: shown as one line, without a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from sheldon.core.paths import repo_path

SHOWN = 120  # characters of a user's value a message echoes


class StepError(Exception):
    """Bad input or an unusable resource: the message names the problem and, where possible, the fix."""


def shorten(value: object, limit: int = SHOWN) -> str:
    """`value` as a message echoes it: on one line (control characters escaped) and at most about
    `limit` characters, keeping its start and its end (a URL's host, a path's file name)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    if len(text) <= limit:
        return text
    longest_marker = len(f"...[{len(text):,} characters]...")
    keep = max((limit - longest_marker) // 2, 1)
    return f"{text[:keep]}...[{len(text) - 2 * keep:,} characters]...{text[-keep:]}"


def first_line(message: object) -> str:
    """The first line of `message` (an exception's text; its type's name when that is empty)."""
    lines = str(message).strip().splitlines()
    if lines:
        return lines[0]
    return type(message).__name__ if isinstance(message, BaseException) else ""


def yaml_problem(err: Exception) -> str:
    """Where a YAML (or JSON) text does not parse, and why: `line 3, column 5: <problem>`."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + str(getattr(err, "problem", None) or getattr(err, "context", None) or first_line(err))


def usable_folder(setting: str, value: str | os.PathLike, replaced: bool = False) -> Path:
    """The folder a path setting names (relative to the repo), once it is known that the step can
    write there: it is a folder, or can be created as one. `replaced`: the step swaps the whole
    folder by renames, so its parent must be writable too. A StepError names the setting."""
    path = repo_path(value)
    prefix = f"{setting}={shorten(value)}"
    if path.exists() and not path.is_dir():
        kind = "a file" if path.is_file() else "not a folder"
        where = f" ({shorten(path)})" if str(path) != str(value) else ""
        raise StepError(f"{prefix}: is {kind}{where}; point it at a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StepError(f"{prefix}: {shorten(existing)} is a file, so the folder cannot be created there")
    for folder in (path.parent, path) if replaced and path.exists() else (existing,):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StepError(
                f"{prefix}: {shorten(folder)} is not writable; point it at a folder you can write"
            )
    return path
