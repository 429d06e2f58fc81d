"""A step's parameters, declared once: the fields of a frozen dataclass in src/<step>/settings.py,
each with its default and help, a parse function where its annotation does not say how to read it,
and a __post_init__ for the rules between them. The step's argument parser is built from it, its
MLproject is generated from it (sheldon.engine.mlproject), its config.yaml section is checked against it
(sheldon.engine.contract), and the pipeline checks the values config.yaml holds before any step launches
(sheldon.engine.steps). The file imports nothing heavy (no torch): the pipeline reads it in its process.

    @dataclass(frozen=True)
    class Settings(StepSettings):
        raw_data: str = artifact_input("MLflow URI of download_dataset's raw_data artifact")
        min_accuracy: float = parameter(0.0, "fail below this test accuracy", parse=fraction)

        def __post_init__(self) -> None:  # a rule between parameters: StepError, one line
            ...
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

from sheldon.core.errors import StepError, shorten
from sheldon.step.parsers import boolean, json_value, optional_json, optional_str

SETTINGS_FILE = "settings.py"  # in src/<step>/, beside the step's script

# How a parameter of each annotation is read from the command line, and its MLproject type.
_READERS: dict[type, tuple[Callable[[str], Any] | None, str]] = {
    str: (None, "string"),
    int: (int, "int"),
    float: (float, "float"),
    bool: (boolean, "bool"),
    dict: (json_value, "json"),
}
# `X | None`: '' or null (Hydra's None) unsets it.
_OPTIONAL_READERS: dict[type, Callable[[str], Any]] = {str: optional_str, dict: optional_json}


def parameter(
    default: Any, help: str, parse: Callable[[str], Any] | None = None, choices: Sequence[str] = ()
) -> Any:
    """A step parameter: its default, what it means, and how to read it from text when its
    annotation does not say (e.g. sheldon.step.parsers.fraction for a number from 0 to 1)."""
    metadata = {"help": help, "parse": parse, "choices": tuple(choices)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def artifact_input(help: str) -> Any:
    """The MLflow URI of an artifact the step reads (config.yaml's `<step>.inputs` say which one).
    Its default is "", so that a step started without it says in one line how to give one."""
    return field(default="", metadata={"help": f"{help} (required)", "input": True})


@dataclass(frozen=True, kw_only=True)
class Parameter:
    """One declared parameter, as the argument parser, the MLproject and the contract read it."""

    name: str
    kind: str  # its MLproject type: string, int, float, bool or json
    default: Any
    help: str
    parse: Callable[[str], Any] | None  # None: the text itself
    choices: tuple[str, ...] = ()
    is_input: bool = False

    def read(self, text: str) -> Any:
        """The value the step gets from `text` on its command line; ValueError (or argparse's
        ArgumentTypeError) when it refuses it."""
        value = self.parse(text) if self.parse else text
        if self.choices and value not in self.choices:
            raise ValueError(f"invalid choice: {value!r} (choose from {', '.join(self.choices)})")
        return value


def _reader(annotation: Any, name: str) -> tuple[Callable[[str], Any] | None, str]:
    """The parse function and MLproject type an annotation stands for."""
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if optional:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    base = typing.get_origin(annotation) or annotation
    if base not in _READERS or (optional and base not in _OPTIONAL_READERS):
        raise TypeError(f"parameter {name!r}: no reader for {annotation}; give parameter(..., parse=...)")
    parse, kind = _READERS[base]
    return (_OPTIONAL_READERS[base] if optional else parse), kind


class StepSettings:
    """The base of a step's settings dataclass (see the module's docstring)."""

    @classmethod
    def parameters(cls) -> list[Parameter]:
        if not is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        hints = typing.get_type_hints(cls)
        declared = []
        for f in fields(cls):
            parse, kind = _reader(hints[f.name], f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default
            declared.append(
                Parameter(
                    name=f.name,
                    kind=kind,
                    default=default,
                    help=f.metadata.get("help", ""),
                    parse=f.metadata.get("parse") or parse,
                    choices=f.metadata.get("choices", ()),
                    is_input=f.metadata.get("input", False),
                )
            )
        return declared

    @classmethod
    def inputs(cls) -> list[str]:
        """The parameters that are the URIs of artifacts the step reads."""
        return [p.name for p in cls.parameters() if p.is_input]

    @classmethod
    def from_config(cls, section: str, texts: Mapping[str, str]) -> StepSettings:
        """The settings the step would get from these values of its config.yaml `section` (as text,
        the way the pipeline passes them); StepError naming the setting the step would refuse.
        Inputs are left unset: their URIs are known only once the steps before have run."""
        declared = {p.name: p for p in cls.parameters() if not p.is_input}
        values = {}
        for name, text in texts.items():
            if name not in declared:
                raise StepError(f"{section}.{name} is not a parameter of the step ({', '.join(declared)})")
            try:
                values[name] = declared[name].read(text)
            except (ValueError, argparse.ArgumentTypeError) as err:
                quoted = repr(shorten(text))
                named = f"{section}.{name}" if quoted in str(err) else f"{section}.{name}={quoted}"
                raise StepError(f"{named}: {err}") from None  # the value once, where the reason quotes it
        return cls(**values)

    def check_with_store(self) -> None:
        """Checks that need the tracking store (a step overrides it: StepError, one line), made by
        the pipeline once the store is open and before any step launches."""

    def values(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parser(cls, step: str, description: str | None = None) -> SettingsParser:
        return SettingsParser(cls, step, description)


class SettingsParser(argparse.ArgumentParser):
    """The command line of a step, built from its settings: parse_args returns a settings
    instance. A wrong parameter name or value is one line and exit 2 (MLflow passes `-P name=value`
    as `--name value`, and shows the step's output above its own `failed` line); a rule between
    parameters (the settings' __post_init__) raises its StepError."""

    def __init__(self, settings: type[StepSettings], step: str, description: str | None) -> None:
        super().__init__(
            description=description,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            allow_abbrev=False,  # --epoch is no --epochs
        )
        self.settings, self.step = settings, step
        for p in settings.parameters():
            self.add_argument(
                f"--{p.name}", type=p.parse, default=p.default, choices=p.choices or None, help=p.help
            )

    def parse_args(self, args: Sequence[str] | None = None, namespace: None = None) -> Any:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            name = unknown[0].lstrip("-").split("=")[0]
            names = ", ".join(p.name for p in self.settings.parameters())
            self.exit(2, f"error: {self.step} has no parameter {name!r} (its parameters: {names})\n")
        return self.settings(**vars(parsed))

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.step}: {message}\n")


def as_argv(values: Mapping[str, Any]) -> list[str]:
    """The command line that parses back to these values (structured ones as JSON, None as '')."""
    argv = []
    for key, value in values.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else "" if value is None else str(value)
        argv += [f"--{key}", text]
    return argv


def settings_of(step_dir: Path) -> type[StepSettings]:
    """The settings dataclass a step declares in its settings.py, imported from the file under a
    name of its own (the step's folder importable while it loads, for a step's own modules)."""
    script = step_dir / SETTINGS_FILE
    name = f"sheldon_step_{script.parent.name}_{abs(hash(script.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations there
    sys.path.insert(0, str(script.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, StepSettings) and value.__module__ == name
    ]
    if len(found) != 1:
        raise LookupError(f"{script} defines {len(found)} StepSettings dataclasses, not one")
    return found[0]
