"""The pipeline as a picture: its steps, and the artifacts each one reads from the others, as
Mermaid text (`flowchart LR`), drawn from the same source the engine plans with: main.py's steps
and config.yaml's `inputs`. A pipeline run carries it in its description, which the MLflow UI
renders, and in lineage.json.

    python -m sheldon.engine.dag          # make dag: the pipeline main.py and config.yaml declare
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping

from omegaconf import OmegaConf

from sheldon.core.errors import StepError
from sheldon.core.paths import REPO_ROOT
from sheldon.engine.steps import StepConfig, Steps

_FENCE = re.compile(r"```mermaid\n(.*?)```", re.DOTALL)


def flowchart(steps: Steps, configs: Mapping[str, StepConfig]) -> str:
    """Mermaid text of the steps in `configs`, in pipeline order: each a box, each input an
    artifact node (a rounded box) drawn from the step that logs it to the step that reads it, named
    by the step's parameter when that differs from the artifact's name. A step run only on
    request (main.py's `_on_request`) is dashed."""
    lines, edges, artifacts = ["flowchart LR"], [], set()
    for step in (s for s in steps.order if s in configs):
        lines.append(f"    {step}[{step}]" + (":::on_request" if step in steps.on_request else ""))
        for param, ref in configs[step][1].items():
            upstream, artifact = steps.upstream(step, param, ref)
            node = f"{upstream}__{artifact}"
            if node not in artifacts:
                artifacts.add(node)
                lines.append(f"    {node}([{artifact}])")
                edges.append(f"    {upstream} --> {node}")
            edges.append(
                f"    {node} --> {step}" if param == artifact else f"    {node} -- {param} --> {step}"
            )
    if any(step in steps.on_request for step in configs):
        edges.append("    classDef on_request stroke-dasharray: 5 5")
    return "\n".join(lines + edges)


def description(chart: str) -> str:
    """A pipeline run's description (Markdown, which the MLflow UI renders): the picture."""
    return f"```mermaid\n{chart}\n```\n"


def chart_in(text: str) -> str:
    """The Mermaid text a run's description holds ('' when it holds none)."""
    found = _FENCE.search(text)
    return found[1].strip() if found else ""


def declared_chart() -> str:
    """The picture of every step main.py declares, with config.yaml's inputs."""
    from sheldon.engine.contract import pipeline_steps

    steps = pipeline_steps()
    config = OmegaConf.load(REPO_ROOT / "config.yaml")
    return flowchart(steps, {step: steps.settings(config, step) for step in steps.order})


def main() -> None:
    try:
        print(declared_chart())
    except StepError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
