"""The command line made Hydra's, and checked before Hydra sees it: one line per bad override."""

from __future__ import annotations

import re
from pathlib import Path

from sheldon.errors import StepError, first_line, shorten
from sheldon.paths import REPO_ROOT


def hydra_arguments(argv: list[str]) -> list[str]:
    """Make the command line Hydra's: `-P hydra_options="a=1 b='x y'"` arrives as one argument,
    so split it on the spaces outside quotes (keeping the quotes for Hydra's parser), and quote
    a list of steps (or of pins), which Hydra would otherwise read as a sweep (`main.steps=a,b`)."""
    token = re.compile(r"""(?:[^\s'"]|'[^']*'|"[^"]*")+""")
    parts = [part for arg in argv for part in token.findall(arg)]
    steps = re.compile(r"^(main\.(?:steps|force|pin))=([\w:,]+,[\w:,]*)$")
    return [steps.sub(r"\1='\2'", part) for part in parts]


def check_overrides(overrides: list[str]) -> None:
    """Compose the config with the overrides before Hydra does, to turn a malformed override, an
    unknown key or a config.yaml that does not parse into one line naming it (Hydra prints several,
    without the key for a parse error)."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as err:
            problem = first_line(err.message)
            raise StepError(f"malformed override {shorten(override)!r}: {problem}") from None
    with initialize_config_dir(config_dir=str(REPO_ROOT), version_base=None):
        try:
            compose(config_name="config", overrides=[o for o in overrides if not o.startswith("hydra")])
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f"{Path(mark.name).name}, line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise StepError(
                f"{where or 'config.yaml'}: {err.problem or err.context}: fix the YAML there"
            ) from None
        except ConfigCompositionException as err:
            cause = f": {first_line(err.__cause__)}" if err.__cause__ else ""
            raise StepError(f"{first_line(err).rstrip('.')}{cause} (see config.yaml)") from None
