"""The command line made Hydra's, and checked before Hydra sees it: one line per bad override."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from sheldon.core.errors import StepError, first_line, shorten, yaml_problem
from sheldon.core.paths import REPO_ROOT

MULTIRUN_FLAGS = ("-m", "--multirun")
SEARCH_SPACE = "hydra.sweeper.params."


def hydra_arguments(argv: list[str]) -> list[str]:
    """Make the command line Hydra's: `-P hydra_options="a=1 b='x y'"` arrives as one argument,
    so split it on the spaces outside quotes (keeping the quotes for Hydra's parser); quote a list
    of steps (or of pins), which Hydra would otherwise read as a sweep (`main.steps=a,b`); and put
    `-m` first, where Hydra's parser wants it (`mlflow run` puts `main.steps=...` before it)."""
    token = re.compile(r"""(?:[^\s'"]|'[^']*'|"[^"]*")+""")
    parts = [part for arg in argv for part in token.findall(arg)]
    steps = re.compile(r"^(main\.(?:steps|force|pin))=([\w:,]+,[\w:,]*)$")
    parts = [steps.sub(r"\1='\2'", part) for part in parts]
    flags = [part for part in parts if part in MULTIRUN_FLAGS]
    return flags + [part for part in parts if part not in MULTIRUN_FLAGS]


def check_overrides(overrides: list[str], multirun: bool = False) -> None:
    """Compose the config with the overrides before Hydra does, to turn a malformed override, an
    unknown key or a config.yaml that does not parse into one line naming it (Hydra prints several,
    without the key for a parse error). A sweep (`-m`) is checked with its first trial's values,
    and its search space (hydra.sweeper.params) key by key."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    # A search-space entry set on the command line is the sweeper's to read: checked with the rest.
    trial = [first_trial(o, multirun) for o in overrides if not o.lstrip("+").startswith(SEARCH_SPACE)]
    with initialize_config_dir(config_dir=str(REPO_ROOT), version_base=None):
        try:
            config = compose("config", overrides=[o for o in trial if o], return_hydra_config=True)
        except yaml.MarkedYAMLError as err:
            file = Path(err.problem_mark.name).name if err.problem_mark else "config.yaml"
            raise StepError(f"{file}, {yaml_problem(err)}: fix the YAML there") from None
        except ConfigCompositionException as err:
            cause = f": {first_line(err.__cause__)}" if err.__cause__ else ""
            raise StepError(f"{first_line(err).rstrip('.')}{cause} (see config.yaml)") from None
    if multirun and config.main.plan:
        raise StepError(
            "main.plan=true cannot plan a sweep (-m): its trials reuse what earlier trials run, and "
            "an Optuna search picks them from results; plan one trial without -m, e.g. "
            "python main.py main.plan=true train_model.lr=0.01"
        )
    if multirun:
        entries = [
            o.lstrip("+").removeprefix(SEARCH_SPACE)
            for o in overrides
            if o.lstrip("+").startswith(SEARCH_SPACE)
        ]
        check_search_space(config, entries)


def parse_override(text: str) -> Any:
    """Hydra's reading of one override; a malformed one is one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except OverrideParseException as err:
        raise StepError(f"malformed override {shorten(text)!r}: {first_line(err.message)}") from None


def first_trial(text: str, multirun: bool) -> str:
    """An override as the first trial of a sweep has it: `lr=0.1,0.3` as `lr=0.1`, an interval as
    its start; "" for a glob over a config group, which only Hydra can expand."""
    from hydra.core.override_parser.types import Glob

    override = parse_override(text)
    if not override.is_sweep_override():
        return text
    if not multirun:
        raise StepError(
            f"{shorten(text)!r} gives several values, a sweep: add -m (--multirun) to run a pipeline "
            "for each, or quote the value to pass it as one string"
        )
    if isinstance(override.value(), Glob):
        return ""
    if override.is_interval_sweep():
        interval = override.value()
        if interval.start >= interval.end:
            raise StepError(f"{shorten(text)!r}: an interval's start must be below its end")
        return f"{override.get_key_element()}={interval.start}"
    values = list(override.sweep_string_iterator())
    if not values:
        raise StepError(f"{shorten(text)!r}: the sweep has no values")
    return f"{override.get_key_element()}={values[0]}"


def check_search_space(config: Any, entries: list[str]) -> None:
    """The sweeper's search space (hydra.sweeper.params, e.g. in hparams_search/optuna.yaml, and
    `entries`, `<key>=<range>` given on the command line): each key one of the config's, each
    range well-formed."""
    from omegaconf import OmegaConf

    space = OmegaConf.select(config, "hydra.sweeper.params") or {}
    for text in [f"{key}={value}" for key, value in space.items()] + entries:
        key = text.partition("=")[0]
        first_trial(text, multirun=True)
        name = key.lstrip("+~")
        if not key.startswith("+") and OmegaConf.select(config, name, default=_ABSENT) is _ABSENT:
            raise StepError(f"hydra.sweeper.params: {name} is not a key of config.yaml (searching {text!r})")


_ABSENT = object()


def short_overrides(overrides: list[str]) -> str:
    """Overrides as a run's name shows them: `train_model.lr=0.003` as `lr=0.003`, the key's last
    part, unless two keys would then read the same."""
    keys = [override.partition("=")[0] for override in overrides]
    last = [key.rpartition(".")[2] for key in keys]
    return " ".join(
        override.replace(key, short, 1) if last.count(short) == 1 else override
        for override, key, short in zip(overrides, keys, last, strict=True)
    )


def sweep_grid(overrides: list[str]) -> list[str]:
    """The overrides of a sweep that sweep (`train_model.lr=0.001,0.003`, `choice(...)`, a range);
    all of them when none does (an Optuna search's space is in its config: `hparams_search=optuna`)."""
    swept = [override for override in overrides if parse_override(override).is_sweep_override()]
    return swept or overrides


def resume_command(selected: list[str], env_manager: str, extra: str = "") -> str:
    """The command that re-runs this pipeline with the user's overrides (and `extra`, which
    replaces the user's value of the same setting); the cache makes it start at the failed step."""
    from hydra.core.hydra_config import HydraConfig

    # main.plan: the command a plan names is the one that runs
    replaced = ("main.steps=", "main.plan=", *([extra.split("=")[0] + "="] if extra else []))
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(replaced)]
    overrides += [extra] if extra else []
    command = f"mlflow run . --env-manager {env_manager} -P steps={','.join(selected)}"
    return command + (f" -P hydra_options={shlex.quote(' '.join(overrides))}" if overrides else "")
