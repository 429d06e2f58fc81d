"""train: sheldon's SmallCNN on the train split with Adam at a constant lr, one CPU thread,
validated after each epoch; the model is logged with MLflow's pytorch flavor as `model`."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import numpy as np
import torch
import wandb
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sheldon.training.models import SmallCNN


def load(folder: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(folder / f"{name}.npz") as data:
        return torch.from_numpy(data["x"]), torch.from_numpy(data["y"])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
            for i in range(0, len(y), batch_size)
        )
    return correct / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    with mlflow.start_run():
        run = wandb.init(job_type="train", config=vars(args))
        folder = Path(mlflow.artifacts.download_artifacts(args.splits))
        (x, y), (x_val, y_val) = load(folder, "train"), load(folder, "val")
        model = SmallCNN(num_classes=10)
        model(x[:2])  # materialise its lazy layer before the optimizer sees the parameters
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        loss_fn = nn.CrossEntropyLoss()
        shuffle = torch.Generator().manual_seed(args.seed)
        loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True, generator=shuffle)
        for epoch in range(1, args.epochs + 1):
            model.train()
            total = 0.0
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(yb)
            metrics = {"train_loss": total / len(y), "val_accuracy": accuracy(model, x_val, y_val)}
            mlflow.log_metrics(metrics, step=epoch)
            run.log(metrics, step=epoch)
            print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
        mlflow.pytorch.log_model(
            model.eval(),
            name="model",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            serialization_format="pickle",
        )
        run.finish()


if __name__ == "__main__":
    main()
