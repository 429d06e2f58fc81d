"""The steps as the engine sees them: their order (main.py's `_steps`), where each one's settings
live in config.yaml, what each reads from the others, and the few facts a step adds beyond its
MLproject. Selection of the steps a run asks for is parsed here too."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sheldon.core.errors import StepError, first_line, shorten
from sheldon.core.paths import REPO_ROOT, step_dir
from sheldon.step.settings import StepSettings, settings_of

StepConfig = tuple[dict[str, str], dict[str, str]]  # (MLflow parameters, inputs)


@dataclass(frozen=True)
class StepFacts:
    """What the engine must know of a step beyond its MLproject; every field is optional."""

    section: str = ""  # its config.yaml section, when not named after the step
    state_files: tuple[str, ...] = ()  # repo files outside src/<step> its outputs depend on
    # (the parameter naming a folder the step fills in the working tree, the artifact logged from it):
    # a cached run is reused only while that folder still holds that artifact
    workspace: tuple[str, str] | None = None
    # brings a missing or empty workspace folder back without running the step (download_dataset:
    # a DVC pull of the pinned version), so a fresh clone keeps its cache hit; what it did, '' if it could not
    restore: Callable[[Path], str] | None = None
    resume: str = ""  # the override that makes a crashed run continue where it stopped


@dataclass(frozen=True)
class Steps:
    """The pipeline's steps in order, each an MLflow project in src/<step>."""

    order: tuple[str, ...]
    facts: Mapping[str, StepFacts] = field(default_factory=dict)
    # Steps that run only when named, never by `all`, and then always (never from the cache):
    # what they read changes outside the pipeline (test_model: the registry's champion).
    on_request: frozenset[str] = frozenset()

    def fact(self, step: str) -> StepFacts:
        return self.facts.get(step, StepFacts())

    def section(self, step: str) -> str:
        return self.fact(step).section or step

    def select(self, spec: str) -> list[str]:
        """Parse `main.steps` (comma-separated names, or `all`) into pipeline order.
        A unique prefix names a step too, so `steps=download` works."""
        if spec.strip() in ("all", ""):
            return [s for s in self.order if s not in self.on_request]
        names = [n.strip() for n in spec.split(",")]
        if "" in names:
            raise StepError(f"main.steps={shorten(spec)!r} has an empty item: name steps between commas")
        chosen = set()
        for name in names:
            matches = [s for s in self.order if s == name] or [s for s in self.order if s.startswith(name)]
            if len(matches) != 1:
                problem = "ambiguous" if matches else "unknown"
                raise StepError(f"{problem} step {shorten(name)!r}; valid steps: {', '.join(self.order)}")
            chosen.add(matches[0])
        return [s for s in self.order if s in chosen]

    def settings(self, config: DictConfig, step: str) -> StepConfig:
        """A step's MLflow parameters (scalars as text, `_target_` subtrees as JSON) and its
        inputs ({parameter: "<upstream step>/<artifact>"}), all interpolations resolved."""
        section = self.section(step)
        if section not in config:
            raise StepError(f"config.yaml has no section {section!r} for step {step}")
        try:
            values = OmegaConf.to_container(config[section], resolve=True)
        except OmegaConfBaseException as err:
            raise StepError(first_line(f"config.yaml section {section!r}: {err}")) from None
        inputs = values.pop("inputs", None) or {}
        params = {
            key: json.dumps(value) if isinstance(value, (dict, list)) else "" if value is None else str(value)
            for key, value in values.items()
        }
        return params, inputs

    def upstream(self, step: str, param: str, ref: object) -> tuple[str, str]:
        """An input reference, `<upstream step>/<artifact>`, as (step, artifact)."""
        upstream, _, artifact = str(ref).partition("/")
        if upstream not in self.order or not artifact:
            raise StepError(
                f"{self.section(step)}.inputs.{param} = {shorten(ref)!r}: expected <step>/<artifact>, "
                f"with <step> one of {', '.join(self.order)}"
            )
        return upstream, artifact

    def check_settings(self, config: DictConfig, selected: list[str]) -> dict[str, StepSettings]:
        """Each selected step's settings, as it would read them from config.yaml: a value or a rule
        it would refuse only once the steps before it ran is refused now, in one line."""
        return {
            step: settings_of(step_dir(step)).from_config(self.section(step), self.settings(config, step)[0])
            for step in selected
        }

    def forced(self, spec: str, selected: list[str], configs: Mapping[str, StepConfig]) -> dict[str, str]:
        """`main.force`: the named steps, the steps run on request, and every selected step
        downstream of them, each with why it runs."""
        named = set(self.select(spec)) & set(selected) if spec.strip() else set()
        forced = dict.fromkeys(sorted(named), "forced (main.force)")
        forced |= dict.fromkeys(sorted(self.on_request & set(selected)), "runs whenever named, never cached")
        for step in selected:
            upstream = [str(ref).split("/", 1)[0] for ref in configs[step][1].values()]
            if step not in forced and (runs := next((u for u in upstream if u in forced), None)):
                forced[step] = f"input from {runs}, which runs"
        return forced

    def state_digests(self, step: str) -> dict[str, str]:
        """Digests of the repo files, outside src/<step>, whose content the step's outputs depend on."""
        return {
            name: hashlib.sha256((REPO_ROOT / name).read_bytes()).hexdigest()
            for name in self.fact(step).state_files
            if (REPO_ROOT / name).is_file()
        }
