{%- set params = cookiecutter.parameters | step_parameters -%}
"""{{ cookiecutter.step_name }}'s parameters, read by the step's script
({{ cookiecutter.script_name }}) and by the pipeline before it launches anything; config.yaml's
section of the step holds their values. Keep this file light (no torch, no heavy imports): the
pipeline imports it in its own process. A rule between parameters goes in a __post_init__ that
raises sheldon.core.errors.StepError with one line."""

from __future__ import annotations

from dataclasses import dataclass

from sheldon.step.settings import StepSettings, artifact_input, parameter

STEP = "{{ cookiecutter.step_name }}"


@dataclass(frozen=True)
class Settings(StepSettings):
    """The step's parameters; config.yaml's section of the step holds their values.
    After a change here: python -m sheldon.engine.mlproject {{ cookiecutter.step_name }}"""

    input_artifact: str = artifact_input("MLflow URI of the artifact this step reads")
    output_artifact: str = parameter(STEP, "name of the artifact this step logs")
{%- for p in params %}
{{ p.declaration }}
{%- endfor %}
