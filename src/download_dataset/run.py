"""download_dataset: bring data/raw to a version of the data and log it as the `raw_data` artifact.

By default data/raw becomes the version data.dvc pins (or the one committed at `version`),
pulled from the DVC remote. With `download_new`, `source` is downloaded instead, checked,
versioned with DVC (commit + push) and the git commands that publish it are printed."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from sheldon.core.errors import StepError, shorten, usable_folder
from sheldon.core.paths import REPO_ROOT, repo_path
from sheldon.data.datasets import (
    FORMAT_FILE,
    Split,
    count_samples,
    data_files,
    load_checked,
)
from sheldon.data.sources import DEFAULT_TRANSFER, Transfer, download, is_archive, source_name, unpack
from sheldon.data.versioning import (
    DVC_FILE,
    cache_dir,
    check_remote_writable,
    commit_and_push,
    folder_md5,
    folder_tree,
    open_repo,
    pull,
    read_pin,
    remote_url,
    replace_folder,
    resolve_commit,
    restore_command,
    staging_folder,
    tracked_path,
    unkept,
    write_version,
)
from sheldon.step.artifacts import FileDigest, sha256_file
from sheldon.step.cli import run_cli
from sheldon.step.settings import SettingsParser, settings_of
from sheldon.step.tracking import step_run

if TYPE_CHECKING:
    from dvc.repo import Repo

STEP = "download_dataset"
UNRECORDED = "(not recorded in data.dvc)"  # a version added before data.dvc recorded sources


# Its parameters, declared in settings.py: the pipeline checks them without this script's imports.
Settings = settings_of(Path(__file__).parent)


@dataclass(kw_only=True)
class Outcome:
    """What the step did, as logged to MLflow and W&B."""

    action: str  # up-to-date, pulled, bootstrapped, downloaded, unchanged
    dvc_md5: str
    version: str
    sha256: str = ""  # of the downloaded file, or of the dataset file when there is one
    samples: int = 0
    source: str = ""  # where this version came from, as data.dvc records it
    note: str = ""  # what a pipeline shows under its summary, even a quiet one: what to do next


def stage(
    source: str,
    staging: Path,
    transfer: Transfer = DEFAULT_TRANSFER,
    sha256: str | None = None,
    fmt: str = "auto",
    label_column: str = "label",
    split: Split | None = None,
) -> tuple[Path, FileDigest | None]:
    """Download `source` into `staging` and check it: the sha256 of the downloaded file when one is
    expected, archives unpacked safely, then every rule preprocess holds the data to (load_checked;
    its labels only given `split`). Returns the folder that should become
    data/raw and the digest of what was downloaded (None for a folder), which may still be hashing:
    only an expected sha256 makes the data wait for it."""
    data = staging / "data"
    (staging / "download").mkdir(parents=True)
    name = source_name(source)
    downloaded = download(source, staging / "download" / name, transfer)
    try:
        if sha256 and downloaded.digest is None:
            raise StepError(
                f"data.sha256 is set but {shorten(source)} is a folder: a checksum applies to one file"
            )
        if sha256 and (got := downloaded.sha256) != sha256:  # before anything is unpacked or lands
            raise StepError(
                f"checksum mismatch for {shorten(source)}: expected sha256 {shorten(sha256)}, got {got}"
            )
        if is_archive(name):
            unpack(downloaded.path, data)
            data = _single_top_folder(data)
        elif downloaded.digest is None:
            os.replace(downloaded.path, data)
        else:
            data.mkdir()
            os.replace(downloaded.path, data / name)
        load_checked(data, split, fmt, label_column, where=shorten(source))
    except BaseException:
        if downloaded.digest:
            downloaded.digest.cancel()
        raise
    return data, downloaded.digest


def _single_top_folder(folder: Path) -> Path:
    """An archive that wraps everything in one top folder (`mnist/0/...`): use that folder."""
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def dataset_sha256(folder: Path) -> str:
    """The sha256 of the dataset file when data/raw holds one file ("" for a folder of many)."""
    files = [f for f in data_files(folder) if f.name != FORMAT_FILE]
    return sha256_file(files[0]) if len(files) == 1 else ""


def download_new(
    source: str,
    root: Path,
    raw_dir: Path,
    transfer: Transfer = DEFAULT_TRANSFER,
    sha256: str | None = None,
    fmt: str = "auto",
    label_column: str = "label",
    split: Split | None = None,
) -> Outcome:
    """Download `source` into data/raw and version it with DVC (commit + push); on any failure
    data/raw, data.dvc and the remote keep the previous version. `split`: preprocess's settings,
    which the new data must suit before it replaces anything (None: not checked)."""
    repo = open_repo(root)
    pin_path = _tracked_path(root, raw_dir)
    check_remote_writable(repo)
    pinned = read_pin(root) if (root / DVC_FILE).is_file() else None
    with staging_folder(raw_dir) as staging:
        data, digest = stage(source, staging, transfer, sha256, fmt, label_column, split)
        md5 = folder_md5(repo, data)
        if pinned and md5 == pinned.md5:
            note = f"data unchanged: already version {md5} ({DVC_FILE}); nothing committed or pushed"
            if _check_replaceable(repo, raw_dir, md5) != md5:
                with replace_folder(raw_dir, data):
                    pass
                note += f"; {raw_dir} holds it again"
            sha = digest.hexdigest() if digest else ""
            return Outcome(
                action="unchanged",
                dvc_md5=md5,
                version=DVC_FILE,
                sha256=sha,
                source=pinned.source or source,
                note=note,
            )
        _check_replaceable(repo, raw_dir, md5)
        with replace_folder(raw_dir, data, keep=[root / DVC_FILE]):
            md5 = commit_and_push(repo, root, pin_path, source)  # the sha256 finishes meanwhile
    note = (
        f"new data version {md5} from {source} is in {raw_dir} and pushed to {remote_url(repo)}; "
        "publish it so colleagues can pull it:\n"
        f"  git add {DVC_FILE} && git commit -m 'Data: {source_name(source)}'\n"
        "  git tag -a data-v<N> -m '<what changed>' && git push --follow-tags"
    )
    sha = digest.hexdigest() if digest else ""
    return Outcome(action="downloaded", dvc_md5=md5, version=DVC_FILE, sha256=sha, source=source, note=note)


def _check_replaceable(repo: Repo, raw_dir: Path, new_md5: str) -> str | None:
    """data/raw's md5 (None when it does not exist), once it is certain that replacing it with
    version `new_md5` loses nothing: DVC keeps every file of it in its cache or on the remote."""
    if not raw_dir.is_dir():
        return None
    tree = folder_tree(repo, raw_dir)
    current = tree.hash_info.value
    if current != new_md5 and unkept(repo, tree):
        raise StepError(
            f"{raw_dir} holds data that no DVC version records (md5 {current}, in neither the DVC cache "
            f"{cache_dir(repo)} nor the DVC remote {remote_url(repo)}), and bringing it to md5 {new_md5} "
            f"would lose it: version it first (data.download_new=true data.source={raw_dir}) or move it away"
        )
    return current


def bring_pinned(
    source: str,
    root: Path,
    raw_dir: Path,
    version: str | None = None,
    transfer: Transfer = DEFAULT_TRANSFER,
    sha256: str | None = None,
) -> Outcome:
    """Make data/raw the version data.dvc pins (at `version`, a tag or commit, if given): from
    the DVC cache or remote; on a fresh remote, rebuilt from `source` when that gives exactly
    the pinned md5, and pushed."""
    repo = open_repo(root)
    pin_path = _tracked_path(root, raw_dir)
    commit = resolve_commit(root, version) if version else None
    pin = read_pin(root, version)
    label = version or DVC_FILE
    if _check_replaceable(repo, raw_dir, pin.md5) == pin.md5:
        print(f"{raw_dir} already holds the data version {label} pins (md5 {pin.md5})")
        return Outcome(action="up-to-date", dvc_md5=pin.md5, version=label, source=pin.source)
    if commit:
        with staging_folder(raw_dir) as staging:
            write_version(repo, root, commit, pin, staging / "data")
            with replace_folder(raw_dir, staging / "data"):
                pass
        print(f"{raw_dir} now holds data version {version} (md5 {pin.md5}); {DVC_FILE} is unchanged")
        return Outcome(action="pulled", dvc_md5=pin.md5, version=label, source=pin.source)
    if pull(repo, root, pin.md5):
        print(f"dvc pull: {raw_dir} now holds the data version {DVC_FILE} pins (md5 {pin.md5})")
        return Outcome(action="pulled", dvc_md5=pin.md5, version=label, source=pin.source)
    # The remote lacks the pinned version (a fresh machine): rebuild it from the source.
    check_remote_writable(repo)
    with staging_folder(raw_dir) as staging:
        data, digest = stage(source, staging, transfer, sha256)
        built = folder_md5(repo, data)
        if built != pin.md5:
            raise StepError(
                f"{shorten(source)} gives data md5 {built}, but {DVC_FILE} pins {pin.md5}: "
                f"push the pinned version to the DVC remote, or add this data with data.download_new=true"
            )
        with replace_folder(raw_dir, data, keep=[root / DVC_FILE]):
            commit_and_push(repo, root, pin_path)
    note = (
        f"DVC remote {remote_url(repo)} lacked data version md5 {pin.md5}: rebuilt it from {source}, "
        "checked it has exactly that md5, and pushed it"
    )
    sha = digest.hexdigest() if digest else ""
    return Outcome(
        action="bootstrapped",
        dvc_md5=pin.md5,
        version=label,
        sha256=sha,
        source=pin.source or source,
        note=note,
    )


def _tracked_path(root: Path, raw_dir: Path) -> str:
    """data/raw relative to the repo, which must be a folder the step can replace, and the folder
    data.dvc tracks."""
    usable_folder("data.raw_dir", raw_dir, replaced=True)
    try:
        relative = raw_dir.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise StepError(f"data.raw_dir={shorten(raw_dir)} lies outside the repository {root}") from None
    tracked = tracked_path(root)
    if tracked in (None, relative):
        return relative
    undo = restore_command(root, relative)
    if undo is None and relative.startswith(f"{tracked}/"):
        undo = f"dvc remove {DVC_FILE}, then restore a {DVC_FILE} that tracks {relative}"
    if undo:
        raise StepError(
            f"{DVC_FILE} tracks {tracked}, not data.raw_dir={relative}: it was rewritten, as "
            f"`dvc add {tracked}/` does (new data goes in with data.download_new=true or `make new-data`); "
            f"undo it: {undo}"
        )
    raise StepError(
        f"data.raw_dir={shorten(relative)}, but {DVC_FILE} tracks {tracked}: set data.raw_dir={tracked}"
    )


def main(args: Settings) -> None:
    with step_run(STEP, args) as run:
        started = time.perf_counter()
        root, raw_dir = REPO_ROOT, repo_path(args.raw_dir)
        transfer = Transfer(timeout=args.timeout, retries=args.retries)
        if args.download_new:
            run.not_cacheable("download_new fetches data.source, whose content the cache key cannot see")
            split = Split(args.val_size, args.test_size, args.num_classes)
            outcome = download_new(
                args.source, root, raw_dir, transfer, args.sha256, args.format, args.label_column, split
            )
        else:
            outcome = bring_pinned(args.source, root, raw_dir, args.version, transfer, args.sha256)
        outcome.samples = count_samples(raw_dir, args.format, args.label_column)
        outcome.sha256 = outcome.sha256 or dataset_sha256(raw_dir)
        size = sum(f.stat().st_size for f in data_files(raw_dir))
        seconds = time.perf_counter() - started
        outcome.source = outcome.source or UNRECORDED
        info = {"bytes": size, "seconds": round(seconds, 3), **asdict(outcome)}
        run.log_params(
            {
                # where the data came from: `source` is config.yaml's, used only by download_new
                "data_source": outcome.source,
                "data_version": outcome.version,
                "data_action": outcome.action,
                "dvc_md5": outcome.dvc_md5,
                "data_sha256": outcome.sha256,
            }
        )
        run.log_metrics({"bytes": size, "seconds": seconds, "samples": outcome.samples})
        with tempfile.TemporaryDirectory(prefix="sheldon-raw-") as spec_dir:
            # How to read the data travels with the artifact, so preprocess needs no format setting.
            spec = Path(spec_dir) / FORMAT_FILE
            spec.write_text(json.dumps({"format": args.format, "label_column": args.label_column}))
            run.log_artifact(raw_dir, "raw_data", "raw_data", metadata={**info, "format": args.format})
            mlflow.log_artifact(str(spec), artifact_path="raw_data")
        run.headline("bytes", size)
        if outcome.note:
            print(outcome.note)
            run.note(outcome.note)
        print(
            f"raw data: {raw_dir} ({size:,} bytes, {outcome.samples:,} samples, DVC md5 {outcome.dvc_md5}, "
            f"{outcome.action})"
        )


def warm_up() -> None:
    """Called ahead of the step when a pipeline starts its interpreter early
    (sheldon/engine/launchers/template.py): DVC, imported where it is used, takes ~0.3 s to load."""
    import dvc.repo  # noqa: F401


def parser() -> SettingsParser:
    return Settings.parser(STEP, __doc__)


if __name__ == "__main__":
    run_cli(main, parser())
