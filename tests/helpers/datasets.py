"""Small real datasets as tests make them, in each format a team may bring. (Plain Python,
no pytest.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sheldon.data.datasets import Dataset, save_npz

CLASSES = 3


def sample(n: int = 60, side: int = 8) -> Dataset:
    rng = np.random.default_rng(7)
    return Dataset(rng.integers(0, 256, (n, side, side), dtype=np.uint8), np.arange(n) % CLASSES)


def write_images(folder: Path, dataset: Dataset, names: list[str] | None = None) -> Path:
    for i, (pixels, label) in enumerate(zip(dataset.images, dataset.labels, strict=True)):
        cls = folder / (names[label] if names else str(label))
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(cls / f"{i:04d}.png")
    return folder


def write_csv(folder: Path, dataset: Dataset, label: str = "label") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    flat = dataset.images.reshape(len(dataset), -1)
    header = ",".join([f"p{i}" for i in range(flat.shape[1] // 2)] + [label])
    header += "," + ",".join(f"p{i}" for i in range(flat.shape[1] // 2, flat.shape[1]))
    half = flat.shape[1] // 2
    rows = np.column_stack([flat[:, :half], dataset.labels, flat[:, half:]])  # label in the middle
    np.savetxt(folder / "digits.csv", rows, fmt="%d", delimiter=",", header=header, comments="")
    return folder


def write_npz(folder: Path, dataset: Dataset) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_npz(dataset, folder / "digits.npz")
    return folder


WRITERS = {"images": write_images, "csv": write_csv, "npz": write_npz}


def digits(folder: Path, n: int, seed: int) -> Path:
    """A small real NPZ dataset in `folder` (different seeds give different versions), its labels
    config.yaml's ten classes: preprocess can split it from n=100 (ten samples a class)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_npz(Dataset(rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), np.arange(n) % 10), folder / "d.npz")
    return folder


def image_folder(folder: Path, counts: list[int]) -> Path:
    """A real image dataset: one subfolder of 8x8 PNGs per class, counts[c] images in class c."""
    from PIL import Image

    rng = np.random.default_rng(len(counts))
    for label, count in enumerate(counts):
        (folder / str(label)).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                folder / str(label) / f"{i}.png"
            )
    return folder
