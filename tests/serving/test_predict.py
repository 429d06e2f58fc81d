"""Reading what `make predict` is given: image files, .npz and .csv, each as the model takes it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sheldon.core.errors import StepError
from sheldon.serving.predict import read_inputs

SIZE = (28, 28)


def test_a_csv_row_is_an_image_and_its_label_column_is_ignored(tmp_path):
    pixels = np.arange(2 * 784).reshape(2, 784) % 256
    header = "label," + ",".join(f"p{i}" for i in range(784))
    lines = [header] + [
        f"{label}," + ",".join(map(str, row)) for label, row in zip([3, 7], pixels, strict=True)
    ]
    (tmp_path / "digits.csv").write_text("\n".join(lines) + "\n")
    inputs = read_inputs(tmp_path / "digits.csv", SIZE)
    assert inputs.names == ["0", "1"] and inputs.images.dtype == np.uint8
    assert np.array_equal(inputs.images.reshape(2, -1), pixels)


def test_a_csv_without_header_and_an_npz_of_images_with_a_channel_axis(tmp_path):
    pixels = np.full((3, 784), 9)
    np.savetxt(tmp_path / "plain.csv", pixels, fmt="%d", delimiter=",")
    assert read_inputs(tmp_path / "plain.csv", SIZE).images.shape == (3, 28, 28)
    np.savez(tmp_path / "images.npz", images=np.zeros((4, 1, 28, 28), np.uint8), labels=np.arange(4))
    assert read_inputs(tmp_path / "images.npz", SIZE).images.shape == (4, 28, 28)


def test_images_of_another_size_or_colour_are_made_grey_and_resized(tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "colour.png")
    Image.new("L", SIZE, 255).save(tmp_path / "grey.png")
    inputs = read_inputs(tmp_path, SIZE)
    assert inputs.names == ["colour.png", "grey.png"] and inputs.resized == ["colour.png"]
    assert inputs.images.shape == (2, 28, 28) and inputs.images[1].min() == 255


@pytest.mark.parametrize(
    "write, message",
    [
        (
            lambda p: np.savetxt(p / "short.csv", np.zeros((1, 10)), delimiter=","),
            "a row has 10 pixel values",
        ),
        (lambda p: (p / "notes.txt").write_text("hello"), "holds no image the model can read"),
        (
            lambda p: np.savez(p / "two.npz", a=np.zeros(1), b=np.zeros(1)),
            "name its images array `x` or `images`",
        ),
    ],
)
def test_unusable_input_is_one_clear_error(tmp_path, write, message):
    write(tmp_path)
    target = next(tmp_path.iterdir())
    with pytest.raises(StepError, match=message):
        read_inputs(target if target.suffix in (".csv", ".npz") else tmp_path, SIZE)
