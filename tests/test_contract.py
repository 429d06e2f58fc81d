"""The contract check: every step's config.yaml section, MLproject parameters and script arguments
agree, and each disagreement is named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO, copy_repo, make_project

from sheldon.contract import check


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_repository_keeps_the_contract():
    assert check(REPO) == []


def test_cli_names_a_parameter_added_to_an_mlproject_but_not_to_the_script(tmp_path):
    project = make_project(tmp_path)
    mlproject = project.root / "src" / "preprocess" / "MLproject"
    edit(mlproject, "      seed:", "      shuffle:     {type: int, default: 1}   # new\n      seed:")
    edit(mlproject, "--seed {seed}", "--seed {seed} --shuffle {shuffle}")

    result = project.run(sys.executable, "-m", "sheldon.contract", "preprocess")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "contract: preprocess: MLproject parameter 'shuffle' is not in config.yaml section 'preprocess'",
        "contract: preprocess: MLproject parameter 'shuffle' is not an argument of run.py",
    ]
    assert "2 mismatch(es)" in result.stdout


@pytest.mark.parametrize(
    "file, old, new, problem",
    [
        (
            "config.yaml",
            "  seed: 42\n\ntrain_model:",
            "  seed: 42\n  shuffle: true\n\ntrain_model:",
            "config.yaml preprocess.shuffle is not an MLproject parameter (main.py passes it as --shuffle)",
        ),
        (
            "config.yaml",
            "  num_classes: 10\n  seed: 42",
            "  num_classes: 10\n  seed: 0.5",
            "'seed' is int in MLproject but float in config.yaml preprocess",
        ),
        (
            "src/preprocess/run.py",
            '"--seed", type=int',
            '"--seed", type=float',
            "'seed' is int in MLproject but float in run.py",
        ),
        (
            "src/preprocess/run.py",
            '"--seed", type=int, default=42',
            '"--seed", type=int, default=7',
            "default of 'seed' is 42 in MLproject but 7 in run.py",
        ),
        (
            "src/preprocess/MLproject",
            "--seed {seed}",
            "--random_state {seed}",
            "the MLproject command does not pass {seed} as --seed",
        ),
        (
            "src/preprocess/run.py",
            "    return p\n",
            '    p.add_argument("--verbose", type=int, default=0)\n    return p\n',
            "run.py argument --verbose is not an MLproject parameter",
        ),
    ],
    ids=["config-only", "config-type", "script-type", "default", "command", "script-only"],
)
def test_each_mismatch_is_named(tmp_path, file, old, new, problem):
    root = copy_repo(tmp_path / "repo")
    edit(root / file, old, new)
    assert check(root, ["preprocess"]) == [f"preprocess: {problem}"]
