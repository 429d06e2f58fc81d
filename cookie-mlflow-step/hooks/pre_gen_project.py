"""Refuse bad answers before cookiecutter writes a file of the step: one line, exit 1.

The answers themselves were already checked right after the prompts (`__checked` in
cookiecutter.json); this also catches what only the target shows: an existing step folder
(with --overwrite-if-exists) or an existing config.yaml section. cookiecutter renders this file
with Jinja before running it, which fills ANSWERS; it runs in the new step's folder.
"""

import json
import sys
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")
sys.path.insert(0, r"""{{ template_dir }}""")  # home of step_spec

from step_spec import BadAnswer, check_answers, check_target  # noqa: E402

try:
    check_answers(ANSWERS)
    check_target(ANSWERS, Path.cwd())
except BadAnswer as err:
    sys.exit(f"error: {err}")
