"""A step's settings, declared once: the argument parser built from them, the MLproject generated
from them, and what MLflow makes of that MLproject."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from typing import Any

import pytest
import yaml
from helpers.checkout import REPO
from mlflow.projects._project_spec import load_project

from sheldon.engine.mlproject import render, steps_in
from sheldon.step.parsers import fraction
from sheldon.step.settings import Parameter, StepSettings, artifact_input, parameter, settings_of


@dataclass(frozen=True)
class Demo(StepSettings):
    source: str = artifact_input("MLflow URI of what it reads")
    epochs: int = parameter(3, "passes")
    lr: float = parameter(1e-05, "learning rate")
    min_accuracy: float = parameter(0.5, "0 to 1", parse=fraction)
    resume: bool = parameter(False, "continue")
    sha256: str | None = parameter(None, "'' = unchecked")
    format: str = parameter("auto", "how to read it", choices=("auto", "csv"))
    model: dict[str, Any] = parameter({"_target_": "x.Model"}, "model spec")
    scheduler: dict[str, Any] | None = parameter(None, "'' = none")


def parse(*argv: str) -> Demo:
    return Demo.parser("demo").parse_args(list(argv))


def test_the_parser_reads_each_parameter_as_its_annotation_says():
    assert parse() == Demo()
    settings = parse(
        *("--epochs", "5", "--lr", "0.1", "--min_accuracy", "1", "--resume", "True", "--sha256", "ab"),
        *("--format", "csv", "--model", '{"_target_": "y.Net", "hidden": 8}', "--scheduler", "null"),
    )
    assert settings == Demo(
        epochs=5,
        lr=0.1,
        min_accuracy=1.0,
        resume=True,
        sha256="ab",
        format="csv",
        model={"_target_": "y.Net", "hidden": 8},
    )
    assert parse("--sha256", "").sha256 is None
    assert Demo.inputs() == ["source"]
    assert Demo().values()["model"] == {"_target_": "x.Model"}


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--epoch", "5"], "error: demo has no parameter 'epoch' (its parameters: source, epochs, lr,"),
        (["--epochs", "five"], "error: demo: argument --epochs: invalid int value: 'five'"),
        (
            ["--min_accuracy", "2"],
            "error: demo: argument --min_accuracy: expected a number from 0 to 1, got '2'",
        ),
        (["--format", "xml"], "error: demo: argument --format: invalid choice: 'xml'"),
        (["--model", "{"], "error: demo: argument --model: expected JSON, got '{'"),
    ],
    ids=["unknown-name", "int", "fraction", "choice", "json"],
)
def test_a_wrong_name_or_value_is_one_line(capsys, argv, line):
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    [printed] = capsys.readouterr().err.splitlines()
    assert printed.startswith(line)


def test_the_generated_mlproject_says_what_the_step_takes():
    text = render("demo", "run.py", Demo)
    assert text.startswith(
        "# Written by `python -m sheldon.engine.mlproject demo` from the settings in run.py"
    )
    main = yaml.safe_load(text)["entry_points"]["main"]
    assert main["parameters"]["source"] == {"type": "string", "default": ""}
    assert main["parameters"]["lr"] == {"type": "float", "default": 1e-05}  # YAML 1.1 reads 1e-05 as text
    assert main["parameters"]["model"] == {"type": "json", "default": '{"_target_": "x.Model"}'}
    assert '      source: {type: string, default: ""}  # MLflow URI of what it reads (required)\n' in text
    names = [f.name for f in fields(Demo)]
    assert main["command"].split() == [
        "python",
        "run.py",
        *(w for n in names for w in (f"--{n}", f"{{{n}}}")),
    ]


def another_value(p: Parameter) -> str:
    """A value for the parameter, as MLflow passes it, other than its default."""
    if p.choices:
        return next(c for c in p.choices if c != p.default)
    if p.kind == "int":
        return str(p.default + 1)
    if p.kind == "float":  # one that the settings' rules take too (a fraction, a positive lr)
        return str(p.default / 2 if p.default else 0.5)
    return {"bool": str(not p.default), "json": '{"_target_": "z.Other"}'}.get(p.kind, "other")


@pytest.mark.parametrize("step", steps_in(REPO))
def test_mlflow_runs_each_step_with_its_settings_defaults_and_any_parameter(step):
    """The command MLflow builds from the MLproject, as the step parses it: the settings' defaults,
    and a `-P name=value` reaches the parameter of that name."""
    settings = settings_of(REPO / "src" / step)
    entry_point = load_project(str(REPO / "src" / step)).get_entry_point("main")
    parser = settings.parser(step)
    assert parser.parse_args(shlex.split(entry_point.compute_command({}, None))[2:]) == settings()
    for p in settings.parameters():
        given = another_value(p)
        command = entry_point.compute_command({p.name: given}, None)
        assert getattr(parser.parse_args(shlex.split(command)[2:]), p.name) == p.read(given) != p.default
