"""What is left to check once a step parameter is declared once, in the step's settings
(sheldon.step.settings), and config.yaml holds its value: that each step's config.yaml section names
exactly the parameters its settings declare, with values the step can read, and that each
MLproject is current (sheldon.engine.mlproject). The pipeline hands a step its section as it is, so a
mismatch would fail only when that step runs; this check names each one first.

    python -m sheldon.engine.contract [step ...]   # or: make contract; exit 1 when something disagrees
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sheldon.core.errors import shorten
from sheldon.core.paths import REPO_ROOT
from sheldon.engine.mlproject import stale
from sheldon.engine.steps import Steps
from sheldon.step.settings import SETTINGS_FILE, Parameter, settings_of

# The config values a parameter of each kind accepts: an int is a fine float, null unsets a
# string or a spec, and a bool is no int here.
CONFIG_ACCEPTS: dict[str, tuple[type, ...]] = {
    "string": (str, type(None)),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "json": (dict, list, type(None)),
}


def value_problem(where: str, value: Any, text: str, parameter: Parameter) -> str | None:
    """Why the step would refuse this config value (the text the pipeline passes it), if it would."""
    accepted = isinstance(value, CONFIG_ACCEPTS[parameter.kind])
    if not accepted or (isinstance(value, bool) and parameter.kind != "bool"):
        return f"{where} is {type(value).__name__}, but the step takes {parameter.kind}"
    try:
        parameter.read(text)
    except (ValueError, argparse.ArgumentTypeError) as err:
        return f"{where}={shorten(text)!r} is refused by the step: {err}"
    return None


def check_step(root: Path, steps: Steps, step: str, config: DictConfig) -> list[str]:
    """Each disagreement between the step's settings and its config.yaml section, and a stale
    MLproject, one line each."""
    try:
        declared = {p.name: p for p in settings_of(root / "src" / step).parameters()}
        texts, sources = steps.settings(config, step)
    except Exception as err:  # its settings fail to import, or config.yaml lacks its section: one line
        return [f"{step}: {shorten(err)}"]
    section = steps.section(step)
    values = OmegaConf.to_container(config[section], resolve=True)
    values.pop("inputs", None)
    where = f"{step}'s settings (src/{step}/{SETTINGS_FILE})"
    inputs = [name for name, p in declared.items() if p.is_input]
    problems = [
        f"config.yaml {section}.inputs.{n} is not an input in {where}" for n in sources if n not in inputs
    ]
    problems += [
        f"config.yaml {section}.inputs has no {n}, an input in {where}" for n in inputs if n not in sources
    ]
    for name, value in values.items():
        if name not in declared or declared[name].is_input:
            problems.append(f"config.yaml {section}.{name} is not a parameter in {where}")
        elif problem := value_problem(f"config.yaml {section}.{name}", value, texts[name], declared[name]):
            problems.append(problem)
    problems += [
        f"parameter {n!r} of {where} is not in config.yaml section {section!r}"
        for n, p in declared.items()
        if not p.is_input and n not in values
    ]
    problems += stale(root, [step])
    return [f"{step}: {problem}" for problem in problems]


def check(root: Path, steps: Steps, names: Iterable[str]) -> list[str]:
    """Every mismatch of the steps `names`, one line each."""
    config = OmegaConf.load(root / "config.yaml")
    return [problem for step in names for problem in check_step(root, steps, step, config)]


def pipeline_steps() -> Steps:
    """The steps main.py declares, by importing it: main.py stays the one place that lists them."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import main

    return main.STEPS


def main(argv: list[str]) -> int:
    """Check every step, or the steps named on the command line; exit 1 on any mismatch."""
    steps = pipeline_steps()
    problems = [f"{name} is not a step in main.py's _steps" for name in argv if name not in steps.order]
    problems += check(
        REPO_ROOT, steps, [name for name in argv if name in steps.order] if argv else steps.order
    )
    for problem in problems:
        print(f"contract: {problem}", file=sys.stderr)
    if problems:
        print(f"contract: {len(problems)} mismatch(es) between config.yaml and the steps' settings")
        return 1
    print(
        f"contract: config.yaml matches the steps' settings and their MLprojects are current "
        f"({', '.join(argv) or 'every step'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
