"""evaluate: the trained model's accuracy on the test split, logged as a metric and as the
`metrics` artifact (metrics.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import numpy as np
import torch
import wandb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--splits", required=True)
    parser.add_argument("--batch_size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with mlflow.start_run():
        run = wandb.init(job_type="evaluate", config=vars(args))
        model = mlflow.pytorch.load_model(args.model).eval()
        folder = Path(mlflow.artifacts.download_artifacts(args.splits))
        with np.load(folder / "test.npz") as data:
            x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
        size = args.batch_size
        with torch.no_grad():
            predicted = torch.cat([model(x[i : i + size]).argmax(1) for i in range(0, len(y), size)])
        metrics = {"test_accuracy": (predicted == y).float().mean().item()}
        mlflow.log_metrics(metrics)
        mlflow.log_dict(metrics, "metrics/metrics.json")
        run.log(metrics)
        run.finish()
    print(f"test_accuracy={metrics['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
