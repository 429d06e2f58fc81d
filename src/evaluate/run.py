"""evaluate: score the trained model, as it is served (raw images in), on the test split (accuracy,
macro-F1, per-class precision and recall), draw the confusion matrix, the training run's learning
curves and a grid of misclassified test images, and log a predictions table; the test metrics go
to the logged model too, and the scores to an `evaluation` artifact. Then register the model as a
new version of evaluate.registered_model_name (sheldon/serving/registration.py: `challenger`, made
`champion` when it passes evaluate.min_accuracy and beats the champion on the same test images by
the promote_min_* margins, with a model card), unless this is a sweep's trial: the sweep registers
its best trial when it ends. Fail when accuracy is below evaluate.min_accuracy."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: steps run without a display
import matplotlib.pyplot as plt
import numpy as np

from sheldon.core.errors import StepError
from sheldon.core.output import stages
from sheldon.core.processes import peak_memory_mb
from sheldon.core.vocabulary import TRIAL_ENV, parse_runs_uri
from sheldon.data.datasets import load_split, raw_images
from sheldon.serving.model_card import CONFUSION_PNG
from sheldon.serving.predict import accuracy, classify, load_model
from sheldon.serving.registration import EVALUATION, SCORES, log_registration, register_evaluated
from sheldon.step.artifacts import digest_path, logged_model_id
from sheldon.step.cli import run_cli
from sheldon.step.settings import SettingsParser, settings_of
from sheldon.step.tracking import StepRun, step_run

STEP = "evaluate"
CURVES = (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_accuracy", "val_accuracy")))


# Its parameters, declared in settings.py: the pipeline checks them without this script's imports.
Settings = settings_of(Path(__file__).parent)


PER_CLASS = ["class", "precision", "recall", "f1", "support"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) class pairs: row = true class, column = predicted. In numpy:
    scikit-learn's metrics cost ~1 s of import in every pipeline (and sweep) for ten lines."""
    pairs = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def score(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[dict[str, float], list[list]]:
    """Accuracy and macro-F1 (the run's metrics), and a row of precision, recall, F1 and support
    per class (a table: as metrics, they would crowd the runs table with 3 columns a class). A
    ratio with nothing to count (a class never predicted, or absent) is 0."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    hits, predicted, support = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)

    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        return np.divide(top, bottom, out=np.zeros(len(top)), where=bottom > 0)

    precision, recall, f1 = ratio(hits, predicted), ratio(hits, support), ratio(2 * hits, predicted + support)
    metrics = {"test_accuracy": float((y_true == y_pred).mean()), "test_macro_f1": float(f1.mean())}
    rows = [
        [c, float(precision[c]), float(recall[c]), float(f1[c]), int(support[c])] for c in range(num_classes)
    ]
    return metrics, rows


def confusion_figure(matrix: np.ndarray) -> plt.Figure:
    num_classes = len(matrix)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion matrix ({matrix.sum()} test images)",
        xticks=range(num_classes),
        yticks=range(num_classes),
    )
    fig.tight_layout()
    return fig


def misclassified_figure(
    images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, limit: int
) -> plt.Figure | None:
    """A grid of the misclassified test images the model was surest of; None when there are none."""
    wrong = np.flatnonzero(y_true != y_pred)
    if len(wrong) == 0 or limit <= 0:
        return None
    shown = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    cols = min(len(shown), 8)
    rows = -(-len(shown) // cols)
    # One image of all the cells, on one axes: ~0.1 s, where an axes per image took ~0.6 s.
    height, width = images.shape[-2:]
    gap_x, gap_y = width // 4, height // 2 + 2  # the caption sits in the gap above its cell
    mosaic = np.full((rows * (height + gap_y), cols * (width + gap_x) - gap_x), np.nan)
    fig, ax = plt.subplots(figsize=(1.4 * cols, 1.6 * rows + 0.4))
    for cell, i in enumerate(shown):
        row, col = divmod(cell, cols)
        top, left = row * (height + gap_y) + gap_y, col * (width + gap_x)
        image = images[i].reshape(height, width).astype(np.float64)
        span = image.max() - image.min()
        mosaic[top : top + height, left : left + width] = (image - image.min()) / (span or 1.0)
        caption = f"#{i}: {y_true[i]}→{y_pred[i]}\n{confidence[i]:.0%}"
        ax.text(left + width / 2, top - 1, caption, ha="center", va="bottom", fontsize=7)
    ax.imshow(mosaic, cmap=plt.get_cmap("gray").with_extremes(bad="white"), interpolation="nearest")
    ax.axis("off")
    fig.suptitle(f"{len(wrong)} misclassified test images (true→predicted, confidence); surest first")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / (1.6 * rows + 0.4))
    return fig


def train_run_of(model_uri: str) -> str | None:
    """The run that logged the model, when the URI names one (runs:/<run id>/classifier)."""
    parsed = parse_runs_uri(model_uri)
    return parsed[0] if parsed else None


def learning_curves(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch metric history of the training run, read from the tracking store."""
    import mlflow

    client = mlflow.MlflowClient()
    return {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for _, keys in CURVES
        for key in keys
    }


def curves_figure(history: dict[str, list[tuple[int, float]]], run_id: str) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (name, keys) in zip(axes, CURVES, strict=True):
        for key in keys:
            if history.get(key):
                epochs, values = zip(*history[key], strict=True)
                ax.plot(epochs, values, marker="o", label=key.split("_")[0])
        ax.set(xlabel="epoch", ylabel=name, title=name)
        if ax.lines:  # a run without a history (a model logged by hand) has nothing to name
            ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Learning curves of train_model run {run_id[:8]}")
    fig.tight_layout()
    return fig


def log_figure(run: StepRun, figure: plt.Figure | None, filename: str) -> None:
    if figure is not None:
        run.log_figure(figure, filename)
        plt.close(figure)


def log_evaluation(
    run: StepRun, metrics: dict[str, float], per_class: list[list], matrix: np.ndarray, splits: Path
) -> None:
    """The scores as one artifact, `evaluation` (in W&B of type `evaluation`, the end of the
    lineage graph): what registering the model needs, now or when a sweep picks its best trial."""
    with tempfile.TemporaryDirectory(prefix="sheldon-evaluation-") as folder:
        scores = {
            "metrics": metrics,
            "per_class": per_class,
            "confusion": matrix.tolist(),
            "test_split": digest_path(splits),
        }
        (Path(folder) / SCORES).write_text(json.dumps(scores, indent=1))
        run.log_artifact(Path(folder), EVALUATION, EVALUATION, metadata=metrics)


def main(args: Settings) -> None:
    with step_run(STEP, args) as run:
        model = load_model(run.fetch_input("model", args.model))
        splits = run.fetch_input("splits", args.splits)
        x, y = load_split(splits, "test")
        images = raw_images(x)  # as the model is served: raw images in
        probabilities = classify(model, images, batch=args.batch_size)
        y_pred, confidence = probabilities.argmax(1), probabilities.max(1)
        num_classes = max(int(y.max()) + 1, args.num_classes)
        metrics, per_class = score(y, y_pred, num_classes)
        run.log_metrics(metrics, model_id=logged_model_id(args.model))  # on the run and the model
        run.log_table("per_class", PER_CLASS, per_class)
        train_run = train_run_of(args.model)
        with stages(4, "logging results") as begin:
            begin("confusion matrix")
            matrix = confusion_matrix(y, y_pred, num_classes)
            log_figure(run, confusion_figure(matrix), CONFUSION_PNG)
            begin("misclassified images")
            log_figure(
                run, misclassified_figure(x, y, y_pred, confidence, args.misclassified), "misclassified.png"
            )
            begin("learning curves")
            if train_run is not None:
                log_figure(run, curves_figure(learning_curves(train_run), train_run), "learning_curves.png")
            begin("predictions table")
            run.log_table(
                "predictions",
                ["index", "label", "prediction", "confidence", "correct"],
                [
                    [i, int(t), int(p), round(float(c), 4), bool(t == p)]
                    for i, (t, p, c) in enumerate(zip(y, y_pred, confidence, strict=True))
                ],
            )
        if train_run is None:
            print(f"no learning curves: {args.model} does not name a training run (runs:/<id>/classifier)")
        run.log_metrics({"peak_memory_mb": peak_memory_mb()})
        accuracy_ = metrics["test_accuracy"]
        run.headline("test_accuracy", accuracy_)
        print(f"test accuracy {accuracy_:.4f}, macro-F1 {metrics['test_macro_f1']:.4f}")
        log_evaluation(run, metrics, per_class, matrix, splits)
        if args.registered_model_name and os.environ.get(TRIAL_ENV):
            run.note("not registered: a sweep trial (the sweep registers its best trial when it ends)")
        elif args.registered_model_name:

            def score_of(uri: str) -> float:  # the champion, on the test images already loaded
                return accuracy(load_model(run.fetch_input("champion", uri)), images, y)

            origin = f"registered when evaluate run {run.run_id} scored it"
            decision = register_evaluated(run.run_id, origin, score_of)
            log_registration(run, decision, args.model)
            print(f"registry: {decision}")
        if accuracy_ < args.min_accuracy:
            raise StepError(
                f"test accuracy {accuracy_:.4f} is below evaluate.min_accuracy={args.min_accuracy}"
            )


def parser() -> SettingsParser:
    return Settings.parser(STEP, __doc__)


if __name__ == "__main__":
    run_cli(main, parser())
