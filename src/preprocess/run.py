"""preprocess: validate the raw digits, scale them to [0, 1] and make a stratified
train/val/test split, logged as the `splits` artifact (train.npz, val.npz, test.npz)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from sheldon.core.output import stages
from sheldon.data.datasets import Dataset, Split, load_checked, save_splits
from sheldon.step.cli import run_cli
from sheldon.step.settings import SettingsParser, settings_of
from sheldon.step.tracking import step_run

STEP = "preprocess"


# Its parameters, declared in settings.py: the pipeline checks them without this script's imports.
Settings = settings_of(Path(__file__).parent)


def scale(images: np.ndarray) -> np.ndarray:
    """Pixels 0..255 to float32 in [0, 1], with a channel axis: (N, 1, H, W)."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def split(dataset: Dataset, plan: Split, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified split into train/val/test (sizes are fractions of the whole dataset) of a dataset
    that load_checked passed with `plan`, so that every class reaches every split."""
    y = dataset.labels
    # Split sample indices, then scale each split: the same samples in the same order as splitting
    # the scaled array, without two extra copies of it in float32 (~0.4 GB for Fashion-MNIST).
    rest, test = train_test_split(np.arange(len(y)), test_size=plan.test_size, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=plan.val_share, stratify=y[rest], random_state=seed)
    return {
        name: (scale(dataset.images[i]), y[i]) for name, i in (("train", train), ("val", val), ("test", test))
    }


def class_counts(splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict:
    return {name: np.bincount(y, minlength=num_classes).tolist() for name, (_, y) in splits.items()}


def main(args: Settings) -> None:
    with step_run(STEP, args) as run:
        plan = Split(args.val_size, args.test_size, args.num_classes)
        with stages(3, STEP) as begin:
            begin("reading raw_data")
            dataset = load_checked(run.fetch_input("raw_data", args.raw_data), plan, where=args.raw_data)
            begin("splitting")
            splits = split(dataset, plan, args.seed)
            counts = class_counts(splits, args.num_classes)
            begin("logging splits")
            with tempfile.TemporaryDirectory(prefix="sheldon-splits-") as out:
                save_splits(splits, Path(out))
                (Path(out) / "class_counts.json").write_text(json.dumps(counts, indent=2))
                run.log_artifact(Path(out), "splits", "dataset", metadata={"class_counts": counts})
        run.log_metrics({f"n_{name}": len(y) for name, (_, y) in splits.items()})
        run.headline("n_train", len(splits["train"][1]))
        print("split sizes: " + ", ".join(f"{n}={len(y)}" for n, (_, y) in splits.items()))


def parser() -> SettingsParser:
    return Settings.parser(STEP, __doc__)


if __name__ == "__main__":
    run_cli(main, parser())
