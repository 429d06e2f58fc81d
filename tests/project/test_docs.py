"""Every command the docs show is run, as written, by the walk (tests/e2e/test_docs_e2e.py), or
listed in NOT_RUN (tests/helpers/docs.py) with the reason; the links between the pages lead
somewhere, and each reference page names everything its source defines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.checkout import REPO
from helpers.docs import DOCS, NOT_RUN, every_command, fill_placeholders, not_run_key


def test_every_documented_command_is_run_or_listed_with_its_reason():
    commands = every_command()
    assert len(commands) > 30, "the docs' commands were not found: has the Markdown changed shape?"
    walked = [c for c in commands if not_run_key(c) is None]
    unfilled = [f"{c.where}: {c.text}" for c in walked if fill_placeholders(c.text, {}) is None]
    assert not unfilled, "commands the walk cannot fill in; list them in NOT_RUN with why:\n" + "\n".join(
        unfilled
    )
    listed = {not_run_key(c) for c in commands} - {None}
    assert not set(NOT_RUN) - listed, f"NOT_RUN entries the docs no longer show: {set(NOT_RUN) - listed}"


@pytest.mark.parametrize("reason", sorted({r for r in NOT_RUN.values() if "covered: " in r}))
def test_a_command_covered_elsewhere_names_a_test_that_exists(reason):
    file, name = reason.split("covered: ", 1)[1].split("::")
    assert re.search(rf"^def {re.escape(name)}\(", (REPO / file).read_text(), re.MULTILINE), reason


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The #fragments of a Markdown page's headings, as GitHub makes them."""
    headings = re.findall(
        r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL), re.MULTILINE
    )
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_docs_leads_to_a_page_and_heading_that_exist():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            file, _, fragment = target.partition("#")
            page = (doc.parent / file).resolve() if file else doc
            if not page.exists() or (fragment and page.suffix == ".md" and fragment not in anchors(page)):
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_the_readme_lists_every_page_of_the_docs():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(DOCS[0].read_text())}
    assert not set(DOCS[1:]) - linked, (
        f"pages the README's table of contents leaves out: {set(DOCS[1:]) - linked}"
    )


def flat_keys(mapping: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += flat_keys(value, f"{prefix}{key}.")
    return keys


def names_to_document(page: str) -> list[tuple[str, str]]:
    """What a reference page must name, read from where it is defined: (the page's section that
    names it, "" for anywhere on the page; the name)."""
    from omegaconf import OmegaConf

    from sheldon.core import vocabulary
    from sheldon.step.settings import settings_of

    if page == "config.md":  # every key of config.yaml but Hydra's own
        config = OmegaConf.to_container(OmegaConf.load(REPO / "config.yaml"))
        sections = {name: v for name, v in config.items() if name not in ("hydra", "defaults")}
        return [("", key) for name, v in sections.items() for key in flat_keys(v, f"{name}.")]
    if page == "make-targets.md":
        phony = re.search(r"^\.PHONY: (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
        return [("", f"make {target}") for target in phony.split()]
    if page == "tags.md":
        names = vars(vocabulary).items()
        return [("", value) for name, value in names if name.isupper() and isinstance(value, str)]
    steps = sorted(path.parent for path in (REPO / "src").glob("*/MLproject"))  # each in its section
    return [(step.name, p.name) for step in steps for p in settings_of(step).parameters()]


@pytest.mark.parametrize("page", ["config.md", "make-targets.md", "tags.md", "step-parameters.md"])
def test_a_reference_page_names_everything_its_source_defines(page):
    text = (REPO / "docs" / "reference" / page).read_text()
    sections = {"": text} | {part.split("\n", 1)[0]: part for part in text.split("\n## ")[1:]}
    missing = [
        f"{where}: {name}" if where else name
        for where, name in names_to_document(page)
        if f"`{name}`" not in sections.get(where, "")
    ]
    assert not missing, f"docs/reference/{page} does not name: {missing}"
