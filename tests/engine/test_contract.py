"""A step parameter is declared once, in its step's settings: the MLprojects generated from them are
current, and the contract names each way config.yaml disagrees with the settings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.checkout import REPO, copy_repo
from helpers.project import make_project

from sheldon.engine.contract import check, pipeline_steps
from sheldon.engine.mlproject import stale, steps_in
from sheldon.engine.steps import Steps


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_repository_keeps_the_contract():
    steps = pipeline_steps()
    assert sorted(steps.order) == steps_in(REPO)
    assert check(REPO, steps, steps.order) == []


def test_the_committed_mlprojects_are_the_generated_ones():
    assert stale(REPO, steps_in(REPO)) == []


def test_a_parameter_added_to_the_settings_only_is_named_and_its_mlproject_rewritten(tmp_path):
    project = make_project(tmp_path)
    settings_py = project.root / "src" / "preprocess" / "settings.py"
    edit(settings_py, '    seed: int = parameter(42, "seed of the stratified split")\n', "")
    edit(settings_py, "    num_classes: int", "    shuffle: bool = False\n    num_classes: int")

    checked = project.run(sys.executable, "-m", "sheldon.engine.contract", "preprocess")
    assert checked.returncode == 1
    assert checked.stderr.splitlines() == [
        "contract: preprocess: config.yaml preprocess.seed is not a parameter in preprocess's settings "
        "(src/preprocess/settings.py)",
        "contract: preprocess: parameter 'shuffle' of preprocess's settings (src/preprocess/settings.py) "
        "is not in config.yaml section 'preprocess'",
        "contract: preprocess: src/preprocess/MLproject is not current: "
        "`python -m sheldon.engine.mlproject preprocess` writes it",
    ]
    assert "3 mismatch(es)" in checked.stdout

    assert project.run(sys.executable, "-m", "sheldon.engine.mlproject", "--check").returncode == 1
    written = project.run(sys.executable, "-m", "sheldon.engine.mlproject", "preprocess")
    assert written.returncode == 0 and written.stdout == "mlproject: wrote src/preprocess/MLproject\n"
    mlproject = (project.root / "src" / "preprocess" / "MLproject").read_text()
    assert "      shuffle: {type: bool, default: false}\n" in mlproject and "seed" not in mlproject
    assert "      --shuffle {shuffle}" in mlproject
    assert project.run(sys.executable, "-m", "sheldon.engine.mlproject", "--check").returncode == 0


@pytest.mark.parametrize(
    "step, file, old, new, problem",
    [
        (
            "preprocess",
            "config.yaml",
            "  seed: 42\n\ntrain_model:",
            "  seed: 42\n  shuffle: true\n\ntrain_model:",
            "config.yaml preprocess.shuffle is not a parameter in preprocess's settings "
            "(src/preprocess/settings.py)",
        ),
        (
            "preprocess",
            "config.yaml",
            "  num_classes: 10\n  seed: 42",
            "  num_classes: 10\n  seed: 0.5",
            "config.yaml preprocess.seed is float, but the step takes int",
        ),
        (
            "evaluate",
            "config.yaml",
            "  min_accuracy: 0.9",
            "  min_accuracy: 1.5",
            "config.yaml evaluate.min_accuracy='1.5' is refused by the step: expected a number from 0 to 1, "
            "got '1.5'",
        ),
        (
            "preprocess",
            "config.yaml",
            "    raw_data: download_dataset/raw_data\n",
            "",
            "config.yaml preprocess.inputs has no raw_data, an input in preprocess's settings "
            "(src/preprocess/settings.py)",
        ),
        (
            "preprocess",
            "src/preprocess/settings.py",
            'parameter(42, "seed',
            'parameter(7, "seed',
            "src/preprocess/MLproject is not current: "
            "`python -m sheldon.engine.mlproject preprocess` writes it",
        ),
    ],
    ids=["config-only", "config-type", "refused-value", "input-unwired", "stale-mlproject"],
)
def test_each_mismatch_is_named(tmp_path, step, file, old, new, problem):
    root = copy_repo(tmp_path / "repo")
    edit(root / file, old, new)
    assert check(root, Steps((step,)), [step]) == [f"{step}: {problem}"]
