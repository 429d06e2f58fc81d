"""Tests of {{ cookiecutter.step_name }}'s own logic, called directly, and of its typed arguments.
Run them with `pytest tests/steps/test_{{ cookiecutter.step_name }}.py` (`make test` runs them too);
change them along with process()."""

from __future__ import annotations

from pathlib import Path

from helpers.project import load_step

step = load_step("{{ cookiecutter.step_name }}", script="{{ cookiecutter.script_name }}")
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
