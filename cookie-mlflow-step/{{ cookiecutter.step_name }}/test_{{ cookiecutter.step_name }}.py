"""Tests of the step's own logic, called directly, and of its typed arguments.
Run them with `pytest src/{{ cookiecutter.step_name }}`; change them along with process()."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent / "{{ cookiecutter.script_name }}"
_SPEC = importlib.util.spec_from_file_location("{{ cookiecutter.step_name }}_step", _SCRIPT)
step = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = step  # where its settings dataclass looks its module up
_SPEC.loader.exec_module(step)
{%- set params = cookiecutter.parameters | step_parameters %}


def test_process_passes_the_input_through(tmp_path: Path) -> None:
    source = tmp_path / "input"
    source.mkdir()
    (source / "data.txt").write_text("some data")
    output = tmp_path / "output"
    output.mkdir()
{%- if params %}
    metrics = step.process(
        source,
        output,
{%- for p in params %}
        {{ p.name }}={{ p.python }},
{%- endfor %}
    )
{%- else %}
    metrics = step.process(source, output)
{%- endif %}
    assert (output / "data.txt").read_text() == "some data"
    assert metrics == {"n_files": 1, "bytes": len("some data")}


def test_arguments_are_typed() -> None:
    # MLflow passes every value as text; argparse turns each into its type.
    args = step.parser().parse_args(
        [
            "--input_artifact",
            "runs:/0123/data",
{%- for p in params %}
            "--{{ p.name }}",
            {{ p.cli }},
{%- endfor %}
        ]
    )
    assert args.input_artifact == "runs:/0123/data"
    assert args.output_artifact == "{{ cookiecutter.step_name }}"
{%- for p in params %}
    assert args.{{ p.name }} {{ "is" if p.type == "bool" else "==" }} {{ p.python }}
{%- endfor %}
