"""Move the new step's tests to tests/steps/ and print the two edits that add the step to the pipeline
(main.py's _steps, config.yaml). cookiecutter renders this file with Jinja before running it in
the new step's folder."""

import json
import sys
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")
sys.path.insert(0, r"""{{ template_dir }}""")  # home of step_spec

from step_spec import next_steps, place_tests  # noqa: E402

print(next_steps(ANSWERS, Path.cwd(), place_tests(ANSWERS, Path.cwd())))
