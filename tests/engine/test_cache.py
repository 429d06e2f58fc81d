"""The parts of a step's cache key, called directly: each part moves the key, a run's record of
them fits an MLflow tag, and two records' difference reads as what changed."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from helpers.checkout import REPO
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from sheldon.engine.cache import KeyParts, changes_between, key_parts

sys.path.insert(0, str(REPO))  # main.py declares the steps
from main import STEPS  # noqa: E402

BEFORE = KeyParts(
    step="evaluate",
    code={"src/evaluate/run.py": "a" * 64, "src/sheldon/serving/registry.py": "b" * 64},
    params={"batch_size": "512", "min_accuracy": "0.9"},
    inputs={"model": "c" * 64, "splits": "d" * 64},
    deps="e" * 64,
    state={},
)


@pytest.mark.parametrize(
    "change",
    [
        {"code": {**BEFORE.code, "src/evaluate/run.py": "f" * 64}},
        {"params": {**BEFORE.params, "batch_size": "256"}},
        {"inputs": {**BEFORE.inputs, "model": "f" * 64}},
        {"deps": "f" * 64},
        {"state": {"data.dvc": "f" * 64}},
    ],
)
def test_each_part_moves_the_key(change):
    assert dataclasses.replace(BEFORE, **change).key != BEFORE.key


def test_every_steps_record_fits_an_mlflow_tag(config):
    """The record is a tag on the step's run (readable in the UI, read back with the run): it
    must stay under MLflow's limit as the library grows, else the record moves to an artifact."""
    for step in STEPS.order:
        params, inputs = STEPS.settings(config, step)
        digests = dict.fromkeys(inputs, "0" * 64)
        parts = key_parts(step, REPO / "src" / step, params, digests, STEPS.state_digests(step))
        assert "src/sheldon/step/cli.py" in parts.code and f"src/{step}/run.py" in parts.code
        assert len(parts.record()) < MAX_TAG_VAL_LENGTH / 1.5, step


def test_the_difference_names_the_input_parameter_and_file_that_changed():
    now = dataclasses.replace(
        BEFORE,
        code={"src/evaluate/run.py": "f" * 64, "src/sheldon/new.py": "0" * 64},
        params={**BEFORE.params, "min_accuracy": "0.8"},
        inputs={**BEFORE.inputs, "model": "f" * 64},
        state={"data.dvc": "1" * 64},
    )
    sources = {"model": "train_model run 1a2b3c4d (ran in this pipeline)"}
    assert changes_between(BEFORE, now, "evaluate", sources, skip=set()) == [
        "new input: model <- train_model run 1a2b3c4d (ran in this pipeline)",
        "evaluate.min_accuracy: 0.9 -> 0.8",
        "src/evaluate/run.py changed",
        "src/sheldon/new.py added",
        "src/sheldon/serving/registry.py removed",
        "data.dvc changed",
    ]
    assert changes_between(BEFORE, BEFORE, "evaluate", {}, skip=set()) == []
    assert (
        changes_between(BEFORE, now, "evaluate", sources, skip={"model"})[0]
        == "evaluate.min_accuracy: 0.9 -> 0.8"
    )


def test_many_changed_files_are_counted_past_the_first_three():
    now = dataclasses.replace(BEFORE, code={f"src/sheldon/m{i}.py": "0" * 64 for i in range(5)})
    changes = changes_between(BEFORE, now, "evaluate", {}, skip=set())
    assert len(changes) == 4 and changes[-1] == "4 more files changed"
