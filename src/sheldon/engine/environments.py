"""What a step needs when MLflow builds its environment (env managers uv, virtualenv, conda)
instead of running it in this one (`local`).

MLflow builds each step's environment from src/<step>/conda.yml, which pins only the packages that
step imports. The sheldon library is not installed there: the step imports it from this checkout
(PYTHONPATH), so an environment holds no checkout's path and every checkout shares it. uv reads
none of pip's settings: it gets the package sources pip is configured with (find-links, indexes,
constraints), so that e.g. torch==2.13.0 is the local CPU wheel pip takes, not a download.

    eval "$(python -m sheldon.engine.environments uv)"   # uv's sources in this shell (`make run` does it)
"""

from __future__ import annotations

import ast
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from sheldon.core.paths import REPO_ROOT

ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")  # MLflow's, for every step (main.env_manager)

# pip's setting -> uv's variable, and how uv separates several values
PIP_TO_UV = {
    "find-links": ("UV_FIND_LINKS", ","),
    "index-url": ("UV_INDEX_URL", " "),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "constraint": ("UV_CONSTRAINT", " "),
    "no-index": ("UV_NO_INDEX", " "),
    "cert": ("SSL_CERT_FILE", " "),
}
# pip's settings by precedence: its environment variables, then the install command's, then global
SECTIONS = (":env:", "install", "global")


def pip_settings(listing: str) -> dict[str, list[str]]:
    """The settings in `pip config list` output (lines `section.key='value'`, the value as Python
    writes a string), each key's values from the section that takes precedence."""
    found: dict[str, dict[str, list[str]]] = {}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if section in SECTIONS and value:
            found.setdefault(key, {})[section] = str(ast.literal_eval(value)).split()  # pip splits on space
    return {key: next(by[s] for s in SECTIONS if s in by) for key, by in found.items()}


def uv_variables(settings: dict[str, list[str]]) -> dict[str, str]:
    """uv's variables for pip's settings. uv never downloads a Python (this machine's builds the
    environment) and, like pip, takes the best version over all indexes (uv's default takes a
    package from the first index that has it, which here holds torch 2.14.1 and not 2.13.0)."""
    variables = {"UV_PYTHON_DOWNLOADS": "never", "UV_INDEX_STRATEGY": "unsafe-best-match"}
    for key, (variable, separator) in PIP_TO_UV.items():
        if settings.get(key):
            variables[variable] = separator.join(settings[key])
    return variables


@cache
def uv_sources() -> dict[str, str]:
    """uv's variables for the package sources pip is configured with here (its config files and
    PIP_* variables); a variable already set is left as it is."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout  # no pip here: no sources of its to pass on
    return {k: v for k, v in uv_variables(pip_settings(listing)).items() if k not in os.environ}


@contextmanager
def building(env_manager: str) -> Iterator[None]:
    """While MLflow builds a step's environment and starts the step in it: uv's sources, and the
    sheldon library of this checkout on the step's path. Under `local`, nothing changes."""
    if env_manager == "local":
        yield
        return
    library = [str(REPO_ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    variables = {"PYTHONPATH": os.pathsep.join(library)}
    if env_manager == "uv":
        variables |= uv_sources()
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def built_by(prefix: Path) -> str | None:
    """The env manager that built the environment at `prefix` when MLflow did (its prefixes are
    named mlflow-<hash>), else None."""
    if not prefix.name.startswith("mlflow-"):
        return None
    if (prefix / "conda-meta").exists():
        return "conda"
    config = prefix / "pyvenv.cfg"
    uv_made = config.is_file() and any(line.startswith("uv =") for line in config.read_text().splitlines())
    return "uv" if uv_made else "virtualenv"


def main(argv: list[str]) -> int:
    """`python -m sheldon.engine.environments [ENV_MANAGER]`: the shell lines that give uv its sources
    (none for another env manager), or one line saying the env manager is unknown."""
    env_manager = argv[0] if argv else "uv"
    if env_manager not in ENV_MANAGERS:
        print(f"error: env manager {env_manager!r}: use one of {', '.join(ENV_MANAGERS)}", file=sys.stderr)
        return 2
    for name, value in (uv_sources() if env_manager == "uv" else {}).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
