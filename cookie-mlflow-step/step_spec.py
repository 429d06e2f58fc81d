"""What a new step's answers mean: the checks that refuse bad answers, the typed parameters the
templates render, and the two edits that add the step to the pipeline.

cookiecutter imports this module itself (`_extensions` in cookiecutter.json) and the hooks import
it from the template folder, so it needs nothing beyond cookiecutter's own dependencies.
Parameters are written `name`, `name:type` or `name:type=default`, comma-separated; a plain name is
a str whose default is "".
"""

from __future__ import annotations

import importlib.metadata
import json
import keyword
import logging
import math
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from jinja2 import Environment
from jinja2.ext import Extension

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TYPES = ("str", "int", "float", "bool")
# Parameter names the generated files already use: the artifact parameters, config.yaml's
# `inputs` key, argparse's --help and the two positional arguments of process().
RESERVED_PARAMETERS = ("input_artifact", "output_artifact", "inputs", "help", "input_path", "output_dir")
# Names YAML 1.1 (PyYAML, OmegaConf, MLflow) reads as booleans or null, even as keys.
YAML_WORDS = ("y", "yes", "n", "no", "true", "false", "on", "off", "null")
# config.yaml's sections that are not steps.
RESERVED_STEPS = ("main", "hydra", "defaults")
DEFAULT_INPUT = "download_dataset/raw_data"  # the smallest artifact the pipeline makes
SETTINGS_FILE = "settings.py"  # sheldon.step.settings.SETTINGS_FILE: this module imports nothing of sheldon
LINE_LENGTH = 110  # ruff's, in pyproject.toml: the generated step passes `make lint`


@dataclass(frozen=True)
class Parameter:
    """One typed parameter of the step, with its default spelled for each file it appears in."""

    name: str
    type: str
    default: str | int | float | bool

    @property
    def python(self) -> str:
        """The default as a Python literal (double-quoted strings, as ruff format writes them)."""
        return json.dumps(self.default) if self.type == "str" else repr(self.default)

    @property
    def yaml(self) -> str:
        """The default as YAML that PyYAML reads back with the same type (`1e-05` would be a
        string there: YAML 1.1 floats need a dot)."""
        if self.type == "str":
            return json.dumps(self.default)
        if self.type == "bool":
            return "true" if self.default else "false"
        text = repr(self.default)
        if self.type == "float" and "e" in text and "." not in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text

    @property
    def example(self) -> str:
        """A value to show in a Hydra override."""
        return "some_text" if self.default == "" else self.yaml.strip('"')

    @property
    def cli(self) -> str:
        """The default as MLflow passes it on the command line, as a Python string literal."""
        if self.type == "bool":
            return json.dumps(str(self.default).lower())
        return json.dumps(str(self.default))

    @property
    def declaration(self) -> str:
        """The field of the step's settings, as ruff formats it."""
        help_text = f'"{self.type} argument of process()"'
        line = f"    {self.name}: {self.type} = parameter({self.python}, {help_text})"
        if len(line) <= LINE_LENGTH:
            return line
        arguments = "".join(f"        {argument},\n" for argument in (self.python, help_text))
        return f"    {self.name}: {self.type} = parameter(\n{arguments}    )"

    @property
    def mlproject_type(self) -> str:
        return "string" if self.type == "str" else self.type


class BadAnswer(ValueError):
    """An answer the template cannot turn into a working step; the message is one line."""


def parse_default(name: str, type_: str, text: str | None) -> str | int | float | bool:
    if text is None:
        return {"str": "", "int": 0, "float": 0.0, "bool": False}[type_]
    text = text.strip()
    if type_ == "str":
        if any(c in text for c in "\"'\\") or len(text) > 50:
            raise BadAnswer(
                f"parameter {name!r}: a default has at most 50 characters, no quotes or backslashes"
            )
        return text
    if type_ == "bool":
        if text.lower() not in ("true", "false"):
            raise BadAnswer(f"parameter {name!r}: bool default must be true or false, got {text!r}")
        return text.lower() == "true"
    try:
        value = int(text) if type_ == "int" else float(text)
    except ValueError:
        article = "an" if type_ == "int" else "a"
        raise BadAnswer(f"parameter {name!r}: default {text!r} is not {article} {type_}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BadAnswer(f"parameter {name!r}: default {text!r} is not a finite float")
    return value


def check_name(what: str, name: str, reserved: tuple[str, ...], why_reserved: str, longest: int) -> None:
    """A name that becomes a Python identifier and a YAML key (short enough that every generated
    line stays within ruff's line length)."""
    if not IDENTIFIER.fullmatch(name) or keyword.iskeyword(name):
        raise BadAnswer(f"{what} {name!r} is not a Python identifier (letters, digits, _; no digit first)")
    if len(name) > longest:
        raise BadAnswer(f"{what} {name!r} is longer than {longest} characters")
    if name.lower() in YAML_WORDS:
        raise BadAnswer(f"{what} {name!r} reads as a boolean or null in YAML; choose another")
    if name in reserved:
        raise BadAnswer(f"{what} {name!r} {why_reserved}; choose another")


def shadowed_module(name: str) -> str | None:
    """Where the module `name` that a step of that name would shadow comes from (None: no such
    module). A step folder src/<name> is importable as `<name>` (sheldon's editable install puts
    src/ on sys.path), so `import <name>` in the steps, sheldon, MLflow, torch, W&B or DVC would
    hinge on sys.path order; and ruff, whose first-party root src/ is, would file that package's
    imports as the project's own in every file, failing `make lint`."""
    if name == "sheldon":
        return "the pipeline's own library"
    if name in sys.stdlib_module_names:
        return "Python's standard library"
    distributions = importlib.metadata.packages_distributions().get(name)
    return f"installed by {', '.join(sorted(set(distributions)))}" if distributions else None


def parse_parameters(text: str) -> list[Parameter]:
    """`threshold:float=0.5,epochs:int=3,name` -> typed parameters; BadAnswer names a bad one."""
    parameters: list[Parameter] = []
    if not text.strip():
        return parameters
    for item in text.split(","):
        spec, has_default, default = item.partition("=")
        name, _, type_ = (part.strip() for part in spec.partition(":"))
        type_ = type_ or "str"
        if not name:
            raise BadAnswer(f"parameters {text!r}: empty name (write name, name:type or name:type=x)")
        check_name("parameter name", name, RESERVED_PARAMETERS, "is taken by the generated step", 32)
        if any(p.name == name for p in parameters):
            raise BadAnswer(f"parameter {name!r} is given twice")
        if type_ not in TYPES:
            raise BadAnswer(f"parameter {name!r}: unknown type {type_!r}; use one of {', '.join(TYPES)}")
        value = parse_default(name, type_, default if has_default else None)
        parameters.append(Parameter(name, type_, value))
    return parameters


def check_answers(answers: dict[str, Any]) -> list[Parameter]:
    """Raise BadAnswer on the first answer that cannot make a working step."""
    step = str(answers["step_name"]).strip()
    check_name("step_name", step, RESERVED_STEPS, "is a config.yaml section that is not a step", 40)
    if source := shadowed_module(step):
        raise BadAnswer(
            f"step_name {step!r} would shadow the Python module {step} ({source}); choose another"
        )
    if not re.fullmatch(r"[\w.-]{1,64}", str(answers["job_type"])):
        raise BadAnswer(
            f"job_type {answers['job_type']!r} must be letters, digits, '_', '-' or '.': the W&B job type"
        )
    script = str(answers["script_name"])
    stem = script.removesuffix(".py")
    if not script.endswith(".py") or not IDENTIFIER.fullmatch(stem) or stem.startswith("test_"):
        raise BadAnswer(f"script_name {script!r} must be a file name like run.py (not test_*.py)")
    if script == SETTINGS_FILE:
        raise BadAnswer(f"script_name {script!r} is the file of the step's settings: name it run.py")
    return parse_parameters(str(answers["parameters"]))


def repo_root(project_dir: Path) -> Path | None:
    """The sheldon checkout the step is generated in (`-o src`), if it is one."""
    root = project_dir.parent.parent
    return root if (root / "main.py").is_file() and (root / "config.yaml").is_file() else None


def check_target(answers: dict[str, Any], project_dir: Path) -> None:
    """Raise BadAnswer when the step's folder (a step is a folder in src/), its config.yaml
    section or a test file of its name (`test_<step>.py`, anywhere under tests/: pytest imports
    test files by their names) already exists. cookiecutter creates the (empty) folder before
    this hook runs."""
    step = answers["step_name"]
    if any(project_dir.iterdir()):
        raise BadAnswer(f"{project_dir} already exists; choose another step_name (nothing was changed)")
    root = repo_root(project_dir)
    if root is None:
        return
    sections = re.findall(r"^([A-Za-z_]\w*):", (root / "config.yaml").read_text(), re.MULTILINE)
    if step in sections:
        raise BadAnswer(f"config.yaml already has a section {step!r}; choose another step_name")
    if (root / "tests").is_dir() and (tests := sorted((root / "tests").rglob(f"test_{step}.py"))):
        raise BadAnswer(f"{tests[0]} already exists; choose another step_name")


def place_tests(answers: dict[str, Any], project_dir: Path) -> Path:
    """Move the step's tests to the checkout's tests/steps/, where every step's tests live (and
    where editing them leaves the step's code, and so its cache key, alone); where is that file
    now."""
    tests = project_dir / f"test_{answers['step_name']}.py"
    root = repo_root(project_dir)
    if root is None or not (root / "tests").is_dir():
        return tests  # generated outside a checkout: beside the step
    (root / "tests" / "steps").mkdir(exist_ok=True)
    return tests.replace(root / "tests" / "steps" / tests.name)


def config_section(step: str, parameters: list[Parameter]) -> str:
    lines = [
        f"{step}:",
        "  inputs:",
        f"    input_artifact: {DEFAULT_INPUT}   # <step>/<artifact> this step reads",
        f"  output_artifact: {step}",
    ]
    lines += [f"  {p.name}: {p.yaml}" for p in parameters]
    return "\n".join(lines)


def next_steps(answers: dict[str, Any], project_dir: Path, tests: Path) -> str:
    """What the post-generation hook prints: the two edits that put the step in the pipeline."""
    step = answers["step_name"]
    parameters = parse_parameters(str(answers["parameters"]))
    edit_steps = (
        f"1. main.py: add it to _steps, after {DEFAULT_INPUT.split('/')[0]} (whose artifact it reads); "
        f'the end of the list will do:\n\n    "{step}",'
    )
    example = f' -P hydra_options="{step}.{parameters[0].name}={parameters[0].example}"' if parameters else ""
    return (
        f"Created {project_dir}. Two edits add it to the pipeline:\n\n{edit_steps}\n\n"
        f"2. config.yaml: add its section (before `hydra:`):\n\n{config_section(step, parameters)}\n\n"
        f"Then:\n"
        f"  mlflow run . --env-manager local -P steps={step}{example}\n"
        f"  mlflow run src/{step} --env-manager local -P input_artifact=runs:/<run id>/raw_data\n"
        f"  pytest {tests.relative_to(root) if (root := repo_root(project_dir)) else tests}\n"
        f"Write the step's own logic in process() in src/{step}/{answers['script_name']}; its parameters are "
        f"declared once, in src/{step}/{SETTINGS_FILE} "
        f"(after a change: python -m sheldon.engine.mlproject {step})."
    )


def refuse_bad_answers(answers: dict[str, Any]) -> str:
    """Jinja filter rendered right after the prompts (the `__checked` entry of cookiecutter.json),
    before cookiecutter creates anything: click prints the message as one line and exits 1."""
    try:
        check_answers(answers)
    except BadAnswer as err:
        raise click.ClickException(str(err)) from None
    return "ok"


def docstring(text: str, width: int = 100) -> str:
    """A free-text answer made safe inside a triple-quoted Python string, wrapped to fit ruff."""
    safe = " ".join(str(text).replace("\\", "/").replace('"', "'").split())
    return textwrap.fill(safe, width)


class QuietRefusal(logging.Filter):
    """cookiecutter logs a traceback of its own when the pre-generation hook exits non-zero;
    the hook has already printed the one line that says why."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre_gen_project hook" not in record.getMessage()


class StepSpec(Extension):
    """The filters the template uses (`step_parameters`, `refuse_bad_answers`, `docstring`) and
    `template_dir`, the absolute folder of this module, where the hooks import it from."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.globals["template_dir"] = str(Path(__file__).resolve().parent)
        hooks_logger = logging.getLogger("cookiecutter.hooks")
        if not any(isinstance(f, QuietRefusal) for f in hooks_logger.filters):
            hooks_logger.addFilter(QuietRefusal())
        environment.filters["step_parameters"] = lambda text: parse_parameters(str(text))
        environment.filters["refuse_bad_answers"] = refuse_bad_answers
        environment.filters["docstring"] = docstring
