"""One-line errors: a user's value echoed at a readable length, and path settings that cannot be used
named before a step writes anything."""

from __future__ import annotations

import os
import re

import pytest

from sheldon.core.errors import SHOWN, StepError, first_line, shorten, usable_folder
from sheldon.core.paths import REPO_ROOT


def test_an_error_is_shown_by_its_first_line_or_else_its_type():
    assert first_line(ValueError("bad value\n  traceback-like detail")) == "bad value"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line("cannot launch x: no such step\nmore") == "cannot launch x: no such step"


def test_a_short_value_is_echoed_as_it_is():
    assert shorten("data/raw") == "data/raw"
    assert shorten("x" * SHOWN) == "x" * SHOWN


def test_a_long_value_keeps_its_start_and_end_and_says_how_much_is_left_out():
    url = "https://example.org/" + "a" * 100_000 + "/digits.zip"
    text = shorten(url)
    assert len(text) <= SHOWN
    assert text.startswith("https://example.org/aaa") and text.endswith("aaa/digits.zip")
    left_out = int(text.split("...[")[1].split(" characters]")[0].replace(",", ""))
    assert len(text.replace(f"...[{left_out:,} characters]...", "")) + left_out == len(url)


def test_control_characters_cannot_break_the_line():
    assert shorten("a\nb\tc\x1b[31m") == "a\\nb\\tc\\x1b[31m"
    assert "\n" not in shorten("line\n" * 1000)


def test_a_folder_that_exists_or_can_be_created_is_usable_and_nothing_is_created(tmp_path):
    assert usable_folder("train_model.checkpoint_dir", tmp_path) == tmp_path
    deep = tmp_path / "a" / "b"
    assert usable_folder("train_model.checkpoint_dir", deep) == deep
    assert not (tmp_path / "a").exists()


def test_a_file_where_a_folder_belongs_names_the_setting(tmp_path):
    (tmp_path / "ckpt").write_text("")
    with pytest.raises(StepError, match=rf"^train_model.checkpoint_dir={tmp_path}/ckpt: is a file; point"):
        usable_folder("train_model.checkpoint_dir", tmp_path / "ckpt")
    relative = os.path.relpath(tmp_path / "ckpt", REPO_ROOT)  # settings are relative to the repo
    shown = re.escape(f"train_model.checkpoint_dir={relative}: is a file ({REPO_ROOT / relative})")
    with pytest.raises(StepError, match=f"^{shown}; point it at a folder$"):
        usable_folder("train_model.checkpoint_dir", relative)
    with pytest.raises(StepError, match=rf"^data.raw_dir={tmp_path}/ckpt/raw: {tmp_path}/ckpt is a file, so"):
        usable_folder("data.raw_dir", tmp_path / "ckpt" / "raw")


def test_a_huge_setting_is_echoed_short(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(StepError) as raised:
        usable_folder("data.raw_dir", tmp_path / "f" / ("x" * 200))
    assert "characters]" in str(raised.value) and len(str(raised.value)) < 3 * SHOWN


def test_a_folder_that_is_not_writable_names_the_setting(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    (locked / "raw").mkdir(parents=True)
    # os.access says what the user may do (root may write anywhere, so chmod cannot show it here)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != locked and real_access(path, mode))
    with pytest.raises(StepError, match=rf"^train_model.checkpoint_dir=.*: {locked} is not writable"):
        usable_folder("train_model.checkpoint_dir", locked / "new")
    assert usable_folder("data.raw_dir", locked / "raw") == locked / "raw"
    with pytest.raises(StepError, match=rf"^data.raw_dir=.*: {locked} is not writable"):
        usable_folder("data.raw_dir", locked / "raw", replaced=True)  # swapped by renames in its parent
