"""Each step's MLproject, generated from the settings its script declares (sheldon.step.settings): MLflow
reads the parameters and the command from it, a reader sees what the step takes, and nobody keeps
it in line by hand.

    python -m sheldon.engine.mlproject [step ...]           # write src/<step>/MLproject (default: every step)
    python -m sheldon.engine.mlproject --check [step ...]   # exit 1 naming each one that is not current
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from sheldon.core.errors import shorten
from sheldon.core.paths import REPO_ROOT
from sheldon.step.settings import Parameter, StepSettings, settings_of

DEFAULT_SCRIPT = "run.py"


def steps_in(root: Path) -> list[str]:
    """Every step of the checkout: the folders src/<step> that hold an MLproject."""
    return sorted(path.parent.name for path in (root / "src").glob("*/MLproject"))


def entry_command(step_dir: Path) -> str | None:
    """The command of the `main` entry point of the step's MLproject, read without MLflow; None
    when there is none to read (MLflow says what is wrong when the step launches)."""
    try:
        return str(yaml.safe_load((step_dir / "MLproject").read_text())["entry_points"]["main"]["command"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def script_of(step_dir: Path) -> str:
    """The script the step's MLproject runs (run.py for a step that has none yet)."""
    found = re.search(r"python\s+(\S+\.py)", entry_command(step_dir) or "")
    return found.group(1) if found else DEFAULT_SCRIPT


def yaml_default(value: Any) -> str:
    """A default as YAML that reads back as the text the step parses to that value: '' for None,
    a JSON spec as a quoted string."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "'" + json.dumps(value).replace("'", "''") + "'"
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text:  # YAML 1.1 reads 1e-05 as a string
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    return json.dumps(value) if isinstance(value, str) else str(value)


def parameter_line(p: Parameter) -> str:
    line = f"      {p.name}: {{type: {p.kind}, default: {yaml_default(p.default)}}}"
    choices = [f"one of {', '.join(p.choices)}"] if p.choices else []
    comment = "; ".join([p.help, *choices] if p.help else choices)
    return f"{line}  # {comment}" if comment else line


def render(step: str, script: str, settings: type[StepSettings]) -> str:
    parameters = settings.parameters()
    return "\n".join(
        [
            f"# Written by `python -m sheldon.engine.mlproject {step}` from the settings in {script}: "
            "change them there.",
            f"name: {step}",
            "conda_env: conda.yml",
            "",
            "entry_points:",
            "  main:",
            "    parameters:",
            *(parameter_line(p) for p in parameters),
            "    command: >-",
            f"      python {script}",
            *(f"      --{p.name} {{{p.name}}}" for p in parameters),
            "",
        ]
    )


def current(root: Path, step: str) -> str:
    """The MLproject the step's settings give."""
    step_dir = root / "src" / step
    return render(step, script_of(step_dir), settings_of(step_dir))


def stale(root: Path, steps: list[str]) -> list[str]:
    """One line for each step whose MLproject is not what its settings give."""
    problems = []
    for step in steps:
        mlproject = root / "src" / step / "MLproject"
        try:
            expected = current(root, step)
        except Exception as err:  # its settings.py does not import, or declares no settings
            problems.append(f"src/{step}: cannot read its settings: {shorten(err)}")
            continue
        if not mlproject.is_file() or mlproject.read_text() != expected:
            problems.append(
                f"src/{step}/MLproject is not current: `python -m sheldon.engine.mlproject {step}` writes it"
            )
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sheldon.engine.mlproject", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if one is not current")
    parser.add_argument("steps", nargs="*", help="steps (folders in src/); default: every one")
    args = parser.parse_args(argv)
    steps = args.steps or steps_in(REPO_ROOT)
    if args.check:
        problems = stale(REPO_ROOT, steps)
        for problem in problems:
            print(f"mlproject: {problem}", file=sys.stderr)
        return 1 if problems else 0
    for step in steps:
        (REPO_ROOT / "src" / step / "MLproject").write_text(current(REPO_ROOT, step))
        print(f"mlproject: wrote src/{step}/MLproject")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
