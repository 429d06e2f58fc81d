"""A model card for each registered version: what the model is, where it came from (the pipeline
run, the code commit, the data version and its source), how it was trained, how it scored on the
test split (per class, and the confusion matrix) and why it is champion or not. evaluate writes it
as Markdown and as a self-contained HTML page beside the model, in the run that logged it, and
links it from the version's description."""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from sheldon.core.vocabulary import (
    DATA_MD5_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    INPUT_TAG,
    MODEL_CARDS,
    TEST_SPLIT_TAG,
    parse_runs_uri,
    runs_uri,
)
from sheldon.serving.registry import CHALLENGER, CHAMPION, Decision

CONFUSION_PNG = "confusion_matrix.png"  # evaluate's figure, which the HTML card shows


@dataclass(frozen=True)
class Section:
    """A titled part of the card: a paragraph, a table (header row first), or both."""

    title: str
    text: str = ""
    table: Sequence[Sequence[object]] = ()
    image: bytes | None = None  # a PNG, shown in the HTML page only


@dataclass(frozen=True)
class Card:
    title: str
    sections: list[Section] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for section in self.sections:
            parts.append(f"## {section.title}")
            if section.text:
                parts.append(section.text)
            if section.table:
                header, *rows = [[_md_cell(cell) for cell in row] for row in section.table]
                lines = [header, ["---"] * len(header), *rows]
                parts.append("\n".join(f"| {' | '.join(line)} |" for line in lines))
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for section in self.sections:
            body.append(f"<h2>{html.escape(section.title)}</h2>")
            if section.text:
                body.append(f"<p>{html.escape(section.text)}</p>")
            if section.table:
                header, *rows = section.table
                cells = [[f"<th>{html.escape(str(c))}</th>" for c in header]]
                cells += [[f"<td>{html.escape(str(c))}</td>" for c in row] for row in rows]
                body.append("<table>" + "".join(f"<tr>{''.join(row)}</tr>" for row in cells) + "</table>")
            if section.image:
                data = base64.b64encode(section.image).decode()
                body.append(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{data}">')
        return (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
        )


_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
    "text-align:right}th{background:#f3f3f3}img{max-width:32em}"
)


def _md_cell(cell: object) -> str:
    return str(cell).replace("|", "\\|").replace("\n", " ")


def upstream_run(run: Run, name: str) -> Run | None:
    """The run that logged input `name` of `run` (its INPUT_TAG: a runs:/ URI), if it can be read."""
    parsed = parse_runs_uri(run.data.tags.get(INPUT_TAG + name, ""))
    if parsed is None:
        return None
    try:
        return mlflow.get_run(parsed[0])
    except MlflowException:
        return None


def data_source(evaluate_run: Run) -> dict[str, str]:
    """The parameters of the download_dataset run up evaluate's inputs (its data_version, its
    source); empty when it cannot be read."""
    preprocess = upstream_run(evaluate_run, "splits")
    download = upstream_run(preprocess, "raw_data") if preprocess else None
    return download.data.params if download else {}


def card_name(version: ModelVersion) -> str:
    return f"{version.name}-v{version.version}"


def alias_of(decision: Decision) -> str:
    return CHAMPION if decision.promoted else CHALLENGER


def build_card(
    version: ModelVersion,
    decision: Decision,
    train_run: Run | None,
    evaluate_run: Run,
    per_class: list[list],
    confusion: Sequence[Sequence[int]],
    confusion_png: bytes | None,
) -> Card:
    """The card of a registered version, read from the version's tags (its lineage and test
    metrics), the runs that trained and scored it (and, up its inputs, the download_dataset run:
    the data's version and source), and evaluate's per-class table and confusion matrix."""
    tags = version.tags
    fetched = data_source(evaluate_run)
    lineage = [
        ["pipeline run", tags.get("sheldon.pipeline_run", "not recorded")],
        ["code commit", tags.get("sheldon.git_commit") or _tag(train_run, GIT_COMMIT_TAG)],
        ["uncommitted changes", _tag(train_run, GIT_DIRTY_TAG)],
        ["train_model run", version.run_id or "none"],
        ["evaluate run", evaluate_run.info.run_id],
        ["model", version.source],
    ]
    data = [
        ["DVC md5 (data.dvc)", tags.get(DATA_MD5_TAG) or _tag(evaluate_run, DATA_MD5_TAG)],
        ["data version", fetched.get("data_version", "not recorded")],
        ["source (data.source)", fetched.get("source", "not recorded")],
        ["test split digest", tags.get(TEST_SPLIT_TAG, "not recorded")],
        ["test images", sum(row[4] for row in per_class)],
    ]
    params = sorted((train_run.data.params if train_run else {}).items())
    metrics = evaluate_run.data.metrics
    per_class_rows = [[c, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", n] for c, p, r, f, n in per_class]
    return Card(
        f"Model card: {version.name} v{version.version}",
        [
            Section("Decision", f"{decision.why} (alias {alias_of(decision)})"),
            Section("Lineage", table=[["", ""], *lineage]),
            Section("Data", table=[["", ""], *data]),
            Section("Training parameters", table=[["parameter", "value"], *params]),
            Section(
                "Test metrics",
                f"accuracy {metrics.get('test_accuracy', float('nan')):.4f}, "
                f"macro-F1 {metrics.get('test_macro_f1', float('nan')):.4f}",
                table=[["class", "precision", "recall", "f1", "support"], *per_class_rows],
            ),
            Section(
                "Confusion matrix",
                "rows: true class, columns: predicted class",
                table=[
                    ["true \\ predicted", *range(len(confusion))],
                    *([c, *row] for c, row in enumerate(confusion)),
                ],
                image=confusion_png,
            ),
        ],
    )


def _tag(run: Run | None, name: str) -> str:
    return run.data.tags.get(name, "not recorded") if run else "not recorded"


def publish_card(
    decision: Decision,
    evaluate_run_id: str,
    per_class: list[list],
    confusion: Sequence[Sequence[int]],
    origin: str,
) -> str:
    """Write the card of the version `decision` is about, .md and .html, beside the model in the
    run that logged it (the evaluate run when none did), and describe the version: the decision,
    the data it was trained and scored on, its pipeline run, why it was registered (`origin`) and
    a link to the card. Returns the Markdown card's runs:/ URI."""
    client = mlflow.MlflowClient()
    version = client.get_model_version(decision.name, str(decision.version))
    evaluate_run = client.get_run(evaluate_run_id)
    train_run = client.get_run(version.run_id) if version.run_id else None
    home = train_run or evaluate_run
    with tempfile.TemporaryDirectory(prefix="sheldon-card-") as folder:
        png = Path(client.download_artifacts(evaluate_run_id, CONFUSION_PNG, folder)).read_bytes()
        card = build_card(version, decision, train_run, evaluate_run, per_class, confusion, png)
        files = Path(folder) / MODEL_CARDS
        files.mkdir()
        (files / f"{card_name(version)}.md").write_text(card.markdown(), encoding="utf-8")
        (files / f"{card_name(version)}.html").write_text(card.html(), encoding="utf-8")
        client.log_artifacts(home.info.run_id, str(files), MODEL_CARDS)
    path = f"{MODEL_CARDS}/{card_name(version)}"
    page = f"#/experiments/{home.info.experiment_id}/runs/{home.info.run_id}/artifacts/{path}.html"
    uri = runs_uri(home.info.run_id, f"{path}.md")
    data = data_source(evaluate_run)
    md5 = version.tags.get(DATA_MD5_TAG) or _tag(evaluate_run, DATA_MD5_TAG)
    description = "\n\n".join(
        [
            f"{decision.why} (alias `{alias_of(decision)}`)",
            f"Data: {data.get('source', 'source not recorded')}, version "
            f"{data.get('data_version', 'not recorded')} (DVC md5 {md5}); "
            f"test split {version.tags.get(TEST_SPLIT_TAG, 'not recorded')[:12]}",
            f"Pipeline run: `{version.tags.get('sheldon.pipeline_run', 'not recorded')}`; {origin}",
            f"[Model card]({page}): `{uri}`",
        ]
    )
    client.update_model_version(decision.name, str(decision.version), description=description)
    return uri
