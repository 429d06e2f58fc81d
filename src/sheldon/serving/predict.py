"""Using the model train_model logs: load it, classify raw images with it, and classify a folder of
images, an .npz or a .csv into a CSV of predictions (`make predict INPUT=...`).

    python -m sheldon.serving.predict INPUT [--model models:/sheldon-classifier@champion] [--output FILE]

The model takes raw uint8 images, (N, height, width), and gives each its class and the class
probabilities (train_model/classifier.py); evaluate, test_model and this command all score it
that way, as it is served."""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# What loading an exported network needs (~1 s of imports, the first time): at the top, so that a
# step's interpreter started ahead (sheldon/engine/launchers/prestart.py) has it before the step starts.
import torch._dynamo  # noqa: F401
import torch._export.serde.serialize  # noqa: F401

from sheldon.core.errors import StepError
from sheldon.core.output import progress

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
BATCH = 1024


def load_model(path: Path | str) -> Any:
    """The pyfunc model in a local folder, or at a model URI (models:/<name>@<alias>, runs:/...)."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(str(path))
    except Exception as err:
        raise StepError(f"cannot load the model {path}: {str(err).splitlines()[0]}") from None


def image_size(model: Any) -> tuple[int, int]:
    """The (height, width) of the images the model takes, from its signature."""
    shape = model.metadata.get_input_schema().inputs[0].shape
    return int(shape[-2]), int(shape[-1])


def classify(model: Any, images: np.ndarray, desc: str = "predicting", batch: int = BATCH) -> np.ndarray:
    """Class probabilities (N, classes) of raw uint8 images (N, height, width), with a progress bar."""
    chunks = []
    with progress(len(images), desc, "image") as bar:
        for start in range(0, len(images), batch):
            frame = model.predict(images[start : start + batch])
            chunks.append(np.stack(frame["probabilities"].to_numpy()))
            bar.update(len(frame))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def accuracy(model: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """The share of `images` the model classifies as `labels`."""
    return float((classify(model, images, "scoring").argmax(1) == labels).mean())


@dataclass
class Inputs:
    """Images to classify, each with a name (a file, or a row's index), and the files skipped."""

    names: list[str]
    images: np.ndarray
    skipped: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)


def read_inputs(path: Path, size: tuple[int, int]) -> Inputs:
    """Images from a folder of image files (converted to grayscale and resized to `size` when
    they differ; files that are no image are skipped and listed), an .npz (its `x`, `images` or
    only array) or a .csv (a row of height x width pixels each; a `label` column is ignored)."""
    if not path.exists():
        raise StepError(f"{path} does not exist: give a folder of images, an .npz or a .csv")
    if path.is_dir():
        return _read_folder(path, size)
    if path.suffix == ".npz":
        return _read_npz(path, size)
    if path.suffix == ".csv":
        return _read_csv(path, size)
    raise StepError(f"{path}: expected a folder of images, an .npz or a .csv")


def _read_folder(folder: Path, size: tuple[int, int]) -> Inputs:
    from PIL import Image, UnidentifiedImageError

    names, images, skipped, resized = [], [], [], []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with progress(len(files), "reading", "file") as bar:
        for path in files:
            bar.update()
            name = str(path.relative_to(folder))
            try:
                with Image.open(path) as opened:
                    image = opened.convert("L")
            except (UnidentifiedImageError, OSError):
                skipped.append(name)
                continue
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                resized.append(name)
            names.append(name)
            images.append(np.asarray(image, dtype=np.uint8))
    if not images:
        raise StepError(f"{folder} holds no image the model can read ({len(skipped)} other file(s))")
    return Inputs(names, np.stack(images), skipped=skipped, resized=resized)


def _read_npz(path: Path, size: tuple[int, int]) -> Inputs:
    with np.load(path) as data:
        named = [k for k in ("x", "images") if k in data.files]
        keys = named or (data.files if len(data.files) == 1 else [])
        if not keys:
            held = ", ".join(data.files)
            raise StepError(f"{path}: name its images array `x` or `images` (it holds {held})")
        images = data[keys[0]]
    return Inputs([str(i) for i in range(len(images))], _as_raw(images, size, path))


def _read_csv(path: Path, size: tuple[int, int]) -> Inputs:
    with open(path, newline="") as handle:
        header = next(csv.reader(handle), [])
    numeric = all(_is_number(cell) for cell in header)
    columns = [i for i, name in enumerate(header) if numeric or name.strip().lower() != "label"]
    values = np.loadtxt(path, delimiter=",", skiprows=0 if numeric else 1, usecols=columns, ndmin=2)
    if values.shape[1] != size[0] * size[1]:
        raise StepError(
            f"{path}: a row has {values.shape[1]} pixel values; the model takes {size[0]}x{size[1]} images "
            f"({size[0] * size[1]} a row)"
        )
    return Inputs([str(i) for i in range(len(values))], _as_raw(values.reshape(-1, *size), size, path))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _as_raw(images: np.ndarray, size: tuple[int, int], path: Path) -> np.ndarray:
    """Images as the model takes them: uint8 (N, height, width), pixels whole numbers 0..255."""
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != size:
        raise StepError(f"{path}: images of shape {images.shape[1:]}; the model takes {size[0]}x{size[1]}")
    if images.dtype != np.uint8:
        if images.size and (images.min() < 0 or images.max() > 255 or not np.all(images == np.round(images))):
            raise StepError(f"{path}: pixels must be whole numbers 0..255 (raw images, not scaled)")
        images = images.astype(np.uint8)
    return images


def write_predictions(inputs: Inputs, probabilities: np.ndarray, output: Path) -> None:
    """A CSV of each input's name, predicted class and that class's probability, written whole
    (to a temporary file, then renamed) so that a failure leaves no partial output."""
    from sheldon.step.artifacts import atomic_path

    with atomic_path(output) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "class", "probability"])
        for name, row in zip(inputs.names, probabilities, strict=True):
            writer.writerow([name, int(row.argmax()), f"{float(row.max()):.6f}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sheldon.serving.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("input", type=Path, help="a folder of images, an .npz or a .csv")
    parser.add_argument("--model", default="", help="model URI; default: the champion of config.yaml's model")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="the CSV written")
    args = parser.parse_args(argv)
    try:
        from sheldon.serving.registry import champion_uri
        from sheldon.step.store import check_tracking_store, tracking_environment
        from sheldon.step.tracking import configured

        check_tracking_store(tracking_environment())
        uri = args.model or champion_uri(str(configured("evaluate").get("registered_model_name", "")))
        model = load_model(uri)
        size = image_size(model)
        inputs = read_inputs(args.input, size)
        probabilities = classify(model, inputs.images)
        write_predictions(inputs, probabilities, args.output)
    except StepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(inputs.names)} prediction(s) by {uri} written to {args.output}")
    if inputs.resized:
        print(f"resized to {size[0]}x{size[1]}: {len(inputs.resized)} image(s)")
    if inputs.skipped:
        print(f"skipped {len(inputs.skipped)} file(s) that are no image: {', '.join(inputs.skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
