"""download: a packaged dataset, logged as the `raw_data` artifact (data.npz: images, labels)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import wandb

from sheldon.data.datasets import load_packaged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    args = parser.parse_args()
    with mlflow.start_run():
        run = wandb.init(job_type="download", config=vars(args))
        data = load_packaged(args.dataset)
        with tempfile.TemporaryDirectory() as out:
            np.savez(Path(out) / "data.npz", images=data.images, labels=data.labels)
            mlflow.log_artifacts(out, "raw_data")
        run.finish()
    print(f"downloaded {len(data.labels)} samples")


if __name__ == "__main__":
    main()
