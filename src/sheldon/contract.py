"""The contract of every step: its config.yaml section, its MLproject parameters and its script's
arguments name the same parameters with the same types (and the MLproject and script defaults
agree). main.py passes a section to MLflow as parameters and MLflow passes them to the script, so
a mismatch fails only when that step runs; this check finds it first and names each one.

    python -m sheldon.contract [step ...]   # or: make contract; exit 1 when something disagrees
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sheldon.cli import boolean, fraction, json_value, optional_str
from sheldon.paths import REPO_ROOT

# The kind of value each spelling of a type stands for, in each of the three places.
ARGPARSE_KINDS: dict[Callable | None, str] = {
    None: "string",
    str: "string",
    optional_str: "string",
    int: "int",
    float: "float",
    fraction: "float",
    boolean: "bool",
    json_value: "json",
}
MLPROJECT_KINDS = {"string": "string", "str": "string", "uri": "string", "path": "string"}
# Config values a parameter of each kind accepts (an int is a fine float; null is an unset string).
CONFIG_ACCEPTS = {
    "string": (str, type(None)),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "json": (dict, list, type(None)),
}


def load_module(path: Path, name: str) -> ModuleType:
    """Import a file under a unique module name; its own folder is importable while it loads."""
    spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def config_kinds(config: DictConfig, section: str) -> dict[str, type]:
    """{parameter: type of its config value}; `inputs` entries are artifact URIs (strings)."""
    values = OmegaConf.to_container(config[section], resolve=True)
    inputs = values.pop("inputs", None) or {}
    return {name: str for name in inputs} | {name: type(value) for name, value in values.items()}


def mlproject_parameters(step_dir: Path) -> tuple[dict[str, dict], str]:
    """The main entry point's parameters ({name: {type, default}}) and command."""
    main = yaml.safe_load((step_dir / "MLproject").read_text())["entry_points"]["main"]
    parameters = {
        name: spec if isinstance(spec, dict) else {"type": spec}
        for name, spec in (main.get("parameters") or {}).items()
    }
    return parameters, str(main["command"])


def script_arguments(script: Path, step: str) -> dict[str, argparse.Action]:
    """The script's options by name, from the `parser()` every step's script defines."""
    module = load_module(script, f"contract_{step}")
    parser = getattr(module, "parser", None)
    if not callable(parser):
        raise LookupError(f"{script.name} defines no parser() returning its ArgumentParser")
    return {
        action.option_strings[-1].lstrip("-"): action
        for action in parser()._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    }


def argument_kind(action: argparse.Action) -> str | None:
    """The argument's kind, or None for a type this check does not know (not compared)."""
    return ARGPARSE_KINDS.get(action.type)


def config_accepts(value_type: type, kind: str) -> bool:
    """Can a config value of this type feed a parameter of this kind? (bool is no int here)"""
    if value_type is bool and kind != "bool":
        return False
    return issubclass(value_type, CONFIG_ACCEPTS.get(kind, (object,)))


def same_default(action: argparse.Action, default: Any) -> bool:
    """Does the MLproject default, read as the script reads its command line, equal the script's?"""
    convert = action.type or str
    try:
        value = convert(str(default).lower() if isinstance(default, bool) else str(default))
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return False
    return value == action.default


def check_step(root: Path, step: str, section: str, config: DictConfig) -> list[str]:
    """Each disagreement between the step's config section, MLproject and script, one per line."""
    step_dir = root / "src" / step
    if not (step_dir / "MLproject").is_file():
        return [f"{step}: src/{step}/MLproject does not exist"]
    if section not in config:
        return [f"{step}: config.yaml has no section {section!r}"]
    declared, command = mlproject_parameters(step_dir)
    script = re.search(r"python\s+(\S+\.py)", command)
    if script is None:
        return [f"{step}: the MLproject command does not run a python script"]
    try:
        arguments = script_arguments(step_dir / script.group(1), step)
    except Exception as err:  # importing the step's code failed: say so, as one line
        return [f"{step}: cannot read the arguments of {script.group(1)}: {err}"]
    configured = config_kinds(config, section)
    problems = name_problems(configured, declared, arguments, section, script.group(1))
    problems += parameter_problems(configured, declared, arguments, command, section, script.group(1))
    return [f"{step}: {problem}" for problem in problems]


def name_problems(
    configured: dict[str, type],
    declared: dict[str, dict],
    arguments: dict[str, argparse.Action],
    section: str,
    script: str,
) -> list[str]:
    """Parameters one of the three places lacks."""
    problems = [
        f"config.yaml {section}.{n} is not an MLproject parameter (main.py passes it as --{n})"
        for n in configured
        if n not in declared
    ]
    problems += [
        f"MLproject parameter {n!r} is not in config.yaml section {section!r}"
        for n in declared
        if n not in configured
    ]
    problems += [
        f"MLproject parameter {n!r} is not an argument of {script}" for n in declared if n not in arguments
    ]
    problems += [
        f"{script} argument --{n} is not an MLproject parameter" for n in arguments if n not in declared
    ]
    return problems


def parameter_problems(
    configured: dict[str, type],
    declared: dict[str, dict],
    arguments: dict[str, argparse.Action],
    command: str,
    section: str,
    script: str,
) -> list[str]:
    """For each parameter the MLproject and the script share: how it is passed, its type, its default."""
    problems = []
    passed = dict(re.findall(r"--([\w-]+)\s+\{(\w+)\}", command))
    for name in (n for n in declared if n in arguments):
        spec, action = declared[name], arguments[name]
        if passed.get(name) != name:
            problems.append(f"the MLproject command does not pass {{{name}}} as --{name}")
        kind = MLPROJECT_KINDS.get(str(spec.get("type", "string")), str(spec.get("type")))
        script_kind = argument_kind(action)
        if kind == "string" and script_kind == "bool":
            kind = "bool"  # MLflow has no bool type: `string` (its spelling) and `bool` both do
        if script_kind is not None and script_kind != kind:
            problems.append(f"{name!r} is {spec.get('type')} in MLproject but {script_kind} in {script}")
        if name in configured and not config_accepts(configured[name], kind):
            problems.append(
                f"{name!r} is {spec.get('type')} in MLproject but "
                f"{configured[name].__name__} in config.yaml {section}"
            )
        if "default" in spec and not action.required and not same_default(action, spec["default"]):
            problems.append(
                f"default of {name!r} is {spec['default']!r} in MLproject but {action.default!r} in {script}"
            )
    return problems


def check(root: Path = REPO_ROOT, steps: list[str] | None = None) -> list[str]:
    """Every mismatch of every step in main.py's `_steps` (or of `steps`), one line each."""
    pipeline = load_module(root / "main.py", "contract_main")
    config = OmegaConf.load(root / "config.yaml")
    return [
        problem
        for step in (steps if steps is not None else pipeline._steps)
        for problem in check_step(root, step, pipeline.section_of(step), config)
    ]


def main(argv: list[str]) -> int:
    """Check every step, or the steps named on the command line; exit 1 on any mismatch."""
    problems = check(steps=argv or None)
    for problem in problems:
        print(f"contract: {problem}", file=sys.stderr)
    if problems:
        print(f"contract: {len(problems)} mismatch(es) between config.yaml, MLproject and scripts")
        return 1
    print(f"contract: config.yaml, MLproject and script arguments agree ({', '.join(argv) or 'every step'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
