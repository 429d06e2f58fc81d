"""evaluate: score the trained model on the test split (accuracy, macro-F1, per-class metrics,
confusion matrix) and fail when accuracy is below evaluate.min_accuracy."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: steps run without a display
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from sheldon.cli import run_cli
from sheldon.datasets import load_split
from sheldon.errors import StepError
from sheldon.tracking import step_run

STEP = "evaluate"


def predict(model: torch.nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        batches = [
            model(torch.from_numpy(x[i : i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)
        ]
    return torch.cat(batches).numpy()


def score(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class precision, recall and F1."""
    labels = list(range(num_classes))
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    metrics = {
        "test_accuracy": float((y_true == y_pred).mean()),
        "test_macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    for c in labels:
        metrics |= {f"precision_{c}": precision[c], f"recall_{c}": recall[c], f"f1_{c}": f1[c]}
    return metrics


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> plt.Figure:
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > matrix.max() / 2 else "black",
            fontsize=8,
        )
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix ({len(y_true)} test images)",
        xticks=range(num_classes),
        yticks=range(num_classes),
    )
    fig.tight_layout()
    return fig


def load_model(path: Path) -> torch.nn.Module:
    """Load an MLflow pytorch model folder (the fetched `model` input)."""
    import mlflow

    try:
        return mlflow.pytorch.load_model(str(path), map_location="cpu")
    except Exception as err:
        raise StepError(f"cannot load the model in {path}: {err}") from None


def main(args: argparse.Namespace) -> None:
    with step_run(STEP, vars(args)) as run:
        model = load_model(run.fetch_input("model", args.model))
        x, y = load_split(run.fetch_input("splits", args.splits), "test")
        y_pred = predict(model, x, args.batch_size)
        num_classes = max(int(y.max()) + 1, args.num_classes)
        metrics = score(y, y_pred, num_classes)
        run.log_metrics(metrics)
        figure = confusion_figure(y, y_pred, num_classes)
        run.log_figure(figure, "confusion_matrix.png")
        plt.close(figure)
        accuracy = metrics["test_accuracy"]
        run.headline("test_accuracy", accuracy)
        print(f"test accuracy {accuracy:.4f}, macro-F1 {metrics['test_macro_f1']:.4f}")
        if accuracy < args.min_accuracy:
            raise StepError(
                f"test accuracy {accuracy:.4f} is below evaluate.min_accuracy={args.min_accuracy}"
            )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="MLflow URI of train_model's model")
    p.add_argument("--splits", required=True, help="MLflow URI of preprocess's splits artifact")
    p.add_argument("--batch_size", type=int, default=512, help="samples per inference batch")
    p.add_argument("--num_classes", type=int, default=10, help="classes shown in the metrics")
    p.add_argument("--min_accuracy", type=float, default=0.0, help="fail below this test accuracy")
    return p


if __name__ == "__main__":
    run_cli(main, parser())
