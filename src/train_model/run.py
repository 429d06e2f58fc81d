"""train_model: build the model and optimizer named in config (Hydra `_target_`), train on the
`splits` artifact with a progress bar, and log the best epoch's model with mlflow.pytorch."""

from __future__ import annotations

import argparse
import copy
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sheldon.cli import json_value, progress, run_cli
from sheldon.datasets import load_split
from sheldon.errors import StepError
from sheldon.tracking import step_run

STEP = "train_model"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(spec: dict[str, Any], what: str, **kwargs: Any) -> Any:
    """Instantiate a `_target_` spec from config, naming the config key when it is wrong."""
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise StepError(f"train_model.{what} needs a _target_, got {spec!r}")
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as err:
        reason = str(err).strip().splitlines()[0]
        raise StepError(f"cannot build train_model.{what} ({spec['_target_']}): {reason}") from None


def build_model(spec: dict[str, Any], input_shape: tuple[int, ...]) -> nn.Module:
    model = build(spec, "model")
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))  # materialise lazy layers before the optimizer sees them
    return model


def check_hyperparameters(lr: float, epochs: int, batch_size: int) -> None:
    for name, value in (("lr", lr), ("epochs", epochs), ("batch_size", batch_size)):
        if value <= 0:
            raise StepError(f"train_model.{name} must be positive, got {value}")


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    progress: Any | None = None,
) -> tuple[float, float]:
    """One pass over `loader`: trains when an optimizer is given; returns (mean loss, accuracy)."""
    model.train(optimizer is not None)
    total_loss, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for x, y in loader:
            logits = model(x)
            loss = loss_fn(logits, y)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False
                )
    return total_loss / seen, correct / seen


def train(
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    *,
    model_spec: dict[str, Any],
    optimizer_spec: dict[str, Any],
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train and return the model holding the best validation epoch's weights, and the history."""
    check_hyperparameters(lr, epochs, batch_size)
    seed_everything(seed)
    model = build_model(model_spec, train_xy[0].shape[1:])
    optimizer = build(optimizer_spec, "optimizer", params=model.parameters(), lr=lr)
    tensors = [TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for x, y in (train_xy, val_xy)]
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(tensors[0], batch_size=batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(tensors[1], batch_size=max(batch_size, 256))
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    best_state, best_accuracy = None, -1.0
    for epoch in range(1, epochs + 1):
        with progress(len(train_loader), f"epoch {epoch}/{epochs}", "batch") as bar:
            train_loss, train_acc = run_epoch(model, train_loader, loss_fn, optimizer, bar)
            val_loss, val_acc = run_epoch(model, val_loader, loss_fn)
            bar.set_postfix(loss=f"{train_loss:.4f}", val_acc=f"{val_acc:.3f}")
        metrics = {
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
        }
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if val_acc > best_accuracy:
            best_accuracy, best_state = val_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), history


def log_model(model: nn.Module, example: np.ndarray) -> None:
    """Log with signature and input example. Pickled (not pt2-exported) so evaluate and later
    training get a plain nn.Module; requirements pinned rather than inferred, which is slow."""
    import mlflow
    from mlflow.models import infer_signature

    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=infer_signature(example, logits),
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        serialization_format="pickle",
    )


def main(args: argparse.Namespace) -> None:
    with step_run(STEP, vars(args)) as run:
        folder = run.fetch_input("splits", args.splits)
        train_xy, val_xy = load_split(folder, "train"), load_split(folder, "val")
        model, history = train(
            train_xy,
            val_xy,
            model_spec=args.model,
            optimizer_spec=args.optimizer,
            lr=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )
        log_model(model, train_xy[0][:4])
        best = max(h["val_accuracy"] for h in history)
        run.headline("best_val_accuracy", best)
        print(f"best validation accuracy: {best:.4f}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--splits", required=True, help="MLflow URI of preprocess's splits artifact")
    p.add_argument("--epochs", type=int, default=8, help="passes over the training split")
    p.add_argument("--batch_size", type=int, default=64, help="samples per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate given to the optimizer")
    p.add_argument("--seed", type=int, default=42, help="seeds python, numpy and torch")
    p.add_argument("--model", type=json_value, required=True, help="model spec as JSON with _target_")
    p.add_argument("--optimizer", type=json_value, required=True, help="optimizer spec as JSON with _target_")
    return p


if __name__ == "__main__":
    run_cli(main, parser())
