"""test_model: score the registered model's champion (`models:/<name>@champion`), as it is served,
on the test split, or on the dataset test_model.source names, and log its accuracy. Refuses, with
one line, when there is no champion. Not one of the steps `all` runs: name it
(`main.steps=test_model`), after the pipeline has promoted a model."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sheldon.core.errors import StepError
from sheldon.data.datasets import load_raw, load_split, raw_images
from sheldon.data.sources import download, is_archive, source_name, unpack
from sheldon.serving.predict import classify, image_size, load_model
from sheldon.serving.registry import CHAMPION, champion_uri, version_by_alias
from sheldon.step.cli import run_cli
from sheldon.step.settings import SettingsParser, settings_of
from sheldon.step.tracking import step_run

STEP = "test_model"


# Its parameters, declared in settings.py: the pipeline checks them without this script's imports.
Settings = settings_of(Path(__file__).parent)


def labelled_images(args: Settings, splits: Path | None) -> tuple:
    """The images to score, raw, and their labels: the source's, or the test split's."""
    if not args.source:
        assert splits is not None
        x, y = load_split(splits, "test")
        return raw_images(x), y
    with tempfile.TemporaryDirectory(prefix="sheldon-test-data-") as staging:
        name = source_name(args.source)
        (Path(staging) / "download").mkdir()
        downloaded = download(args.source, Path(staging) / "download" / name).path
        folder = Path(staging) / "data"
        if is_archive(name):
            unpack(downloaded, folder)
        elif downloaded.is_dir():
            folder = downloaded
        else:
            folder.mkdir()
            downloaded.rename(folder / name)
        dataset = load_raw(folder, args.format, args.label_column)
    return dataset.images, dataset.labels


def main(args: Settings) -> None:
    with step_run(STEP, args) as run:
        uri = champion_uri(args.model_name)  # one line when there is none
        version = version_by_alias(args.model_name, CHAMPION)
        model = load_model(run.fetch_input("model", uri))
        splits = None if args.source else run.fetch_input("splits", args.splits)
        images, labels = labelled_images(args, splits)
        if images.shape[1:] != image_size(model):
            raise StepError(
                f"test_model.source holds {images.shape[1]}x{images.shape[2]} images; "
                f"the champion takes {image_size(model)[0]}x{image_size(model)[1]}"
            )
        predicted = classify(model, images).argmax(1)
        accuracy = float((predicted == labels).mean())
        run.log_metrics({"test_accuracy": accuracy, "n_scored": len(labels)})
        run.headline("test_accuracy", accuracy)
        scored = args.source or "the test split"
        run.note(f"{args.model_name} v{version.version} (champion): {accuracy:.4f} on {scored}")
        print(f"champion {args.model_name} v{version.version}: test accuracy {accuracy:.4f} on {scored}")


def parser() -> SettingsParser:
    return Settings.parser(STEP, __doc__)


if __name__ == "__main__":
    run_cli(main, parser())
