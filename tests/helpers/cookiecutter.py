"""cookie-mlflow-step as a user runs it: the generator with its answers given, and the two
edits it prints, made. (Plain Python, no pytest.)"""

from __future__ import annotations

import re
import subprocess

from helpers.project import BIN, Project

COOKIECUTTER = str(BIN / "cookiecutter")


def generate(project: Project, *answers: str, force: bool = False) -> subprocess.CompletedProcess:
    """`cookiecutter cookie-mlflow-step -o src` as the docs show it, answers given as extra context."""
    flags = ["--overwrite-if-exists"] if force else []
    return project.run(COOKIECUTTER, "cookie-mlflow-step", "--no-input", *flags, "-o", "src", *answers)


def apply_printed_edits(project: Project, printed: str) -> None:
    """The two edits the generator prints, made as a user would: the printed line goes at the end
    of main.py's `_steps`, and the config section before `hydra:` in config.yaml."""
    entry = re.search(r"^1\. main\.py: .*?\n\n(    \"\w+\",\n)", printed, re.MULTILINE | re.DOTALL).group(1)
    main = project.root / "main.py"
    steps_end = re.compile(r"^(_steps = \[\n.*?)^\]", re.MULTILINE | re.DOTALL)
    text, count = steps_end.subn(lambda found: f"{found.group(1)}{entry}]", main.read_text(), count=1)
    assert count == 1
    main.write_text(text)
    section = re.search(r"add its section \(before `hydra:`\):\n\n(.*?)\n\n", printed, re.DOTALL).group(1)
    config = project.root / "config.yaml"
    config.write_text(config.read_text().replace("\nhydra:", f"\n{section}\n\nhydra:", 1))
