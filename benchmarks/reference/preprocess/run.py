"""preprocess: pixels scaled to [0, 1] and a stratified train/val/test split, logged as the
`splits` artifact (train.npz, val.npz, test.npz: x (N, 1, 28, 28) float32, y int64)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import wandb
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw_data", required=True)
    parser.add_argument("--val_size", type=float, default=0.15)
    parser.add_argument("--test_size", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    with mlflow.start_run():
        run = wandb.init(job_type="preprocess", config=vars(args))
        folder = Path(mlflow.artifacts.download_artifacts(args.raw_data))
        with np.load(folder / "data.npz") as data:
            images, labels = data["images"], data["labels"]
        rest, test = train_test_split(
            np.arange(len(labels)), test_size=args.test_size, stratify=labels, random_state=args.seed
        )
        train, val = train_test_split(
            rest,
            test_size=args.val_size / (1 - args.test_size),
            stratify=labels[rest],
            random_state=args.seed,
        )
        sizes = {}
        with tempfile.TemporaryDirectory() as out:
            for name, index in (("train", train), ("val", val), ("test", test)):
                x = (images[index].astype(np.float32) / 255.0)[:, None, :, :]
                np.savez(Path(out) / f"{name}.npz", x=x, y=labels[index])
                sizes[f"n_{name}"] = len(index)
            mlflow.log_artifacts(out, "splits")
        mlflow.log_metrics(sizes)
        run.log(sizes)
        run.finish()
    print("split sizes: " + ", ".join(f"{name}={n}" for name, n in sizes.items()))


if __name__ == "__main__":
    main()
