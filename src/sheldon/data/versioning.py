"""Versions of data/raw with DVC: data.dvc (at the repo root) pins the md5 of data/raw, the
default remote (.dvc/config) holds every version, a git tag names one.

Every change to data/raw goes through `replace_folder`: the new data is staged beside it,
swapped in with renames, and swapped back if anything after fails (a push, a checksum), so
data/raw and data.dvc keep the last good version and a reader never sees a partial one."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from sheldon.core.errors import StepError, first_line, shorten
from sheldon.core.paths import REPO_ROOT

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc_data.hashfile.tree import Tree

DVC_FILE = "data.dvc"


@dataclass(frozen=True)
class Pin:
    """What a data.dvc pins: the tracked folder (relative to the repo), its DVC md5, and where
    that version came from (its `meta: {source: ...}`, which `dvc commit` and `dvc add` keep;
    '' when none is recorded)."""

    path: str
    md5: str
    source: str = ""


def parse_pin(text: str) -> Pin:
    """What the text of a data.dvc pins: its first `outs` entry (md5 '' when it has none).
    ValueError when it names no tracked folder."""
    try:
        content = yaml.safe_load(text)
        out = content["outs"][0]
        source = (content.get("meta") or {}).get("source", "")
        return Pin(str(out["path"]), str(out["md5"]) if "md5" in out else "", str(source))
    except (yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError):
        raise ValueError(f"not a data.dvc: {shorten(text)}") from None


def is_git_repo(root: Path) -> bool:
    return (root / ".git").exists()


def open_repo(root: Path) -> Repo:
    """The DVC repo at `root`; a copy without git (a tarball, a test copy) works without SCM."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        raise StepError(f"{root} has no .dvc folder: run `dvc init` there, or restore .dvc/ from git")
    try:
        return Repo(str(root), config=None if is_git_repo(root) else {"core": {"no_scm": True}})
    except DvcException as err:
        raise StepError(f"cannot open the DVC repo at {root}: {first_line(err)}") from None


def resolve_commit(root: Path, version: str) -> str:
    """The commit a `data.version` (tag, branch or commit) names, or a StepError saying it names none."""
    if not is_git_repo(root):
        raise StepError(f"data.version={shorten(version)!r} needs a git checkout; {root} is not one")
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{version}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise StepError(
            f"data.version={shorten(version)!r} names no commit or tag of this repository (see `git tag`)"
        )
    return found.stdout.strip()


def read_pin(root: Path, version: str | None = None) -> Pin:
    """The pin in data.dvc: the working tree's, or the one committed at `version`."""
    if version:
        commit = resolve_commit(root, version)
        shown = subprocess.run(
            ["git", "show", f"{commit}:{DVC_FILE}"], cwd=root, capture_output=True, text=True
        )
        if shown.returncode != 0:
            raise StepError(f"data.version={shorten(version)!r} ({commit[:10]}) has no {DVC_FILE}")
        text, where = shown.stdout, f"{DVC_FILE} at {version}"
    else:
        if not (root / DVC_FILE).is_file():
            raise StepError(f"{root / DVC_FILE} is missing: restore it from git, or add data (download_new)")
        text, where = (root / DVC_FILE).read_text(), DVC_FILE
    try:
        pin = parse_pin(text)
    except ValueError:
        pin = None
    if pin is None or not pin.md5:
        raise StepError(f"{where} does not pin a version (expected outs: [{{path, md5}}])")
    return pin


def tracked_path(root: Path) -> str | None:
    """The folder data.dvc tracks (None without a data.dvc)."""
    try:
        return parse_pin((root / DVC_FILE).read_text()).path
    except FileNotFoundError:
        return None
    except ValueError:
        raise StepError(f"{DVC_FILE} is malformed: expected outs: [{{path: data/raw, md5: ...}}]") from None


def restore_command(root: Path, path: str) -> str | None:
    """The commands that undo a rewrite of data.dvc (`dvc add data/` makes it track `data`):
    `dvc remove` drops the rewritten file and the .gitignore line DVC added, git restores the
    newest committed data.dvc that tracks `path`. None when no commit's data.dvc tracks it."""
    if not is_git_repo(root):
        return None
    log = subprocess.run(
        ["git", "log", "--format=%H", "--", DVC_FILE], cwd=root, capture_output=True, text=True
    )
    for newest, commit in enumerate(log.stdout.split()):
        try:
            if read_pin(root, commit).path != path:
                continue
        except StepError:  # a commit that deleted data.dvc, or a malformed one
            continue
        if newest:  # the rewrite was committed: restore the one before it, commit the repair
            restore = f"dvc remove {DVC_FILE} && git checkout {commit[:10]} -- {DVC_FILE}"
            return f"{restore}, then commit {DVC_FILE} and .gitignore"
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", ".gitignore"], cwd=root)
        unstage = " && git reset -q -- .gitignore" if staged.returncode == 1 else ""
        return f"dvc remove {DVC_FILE} && git checkout HEAD -- {DVC_FILE}{unstage}"
    return None


def folder_tree(repo: Repo, folder: Path) -> Tree:
    """The listing DVC gives a folder, with its md5 (`<hex>.dir`), computed without touching the cache."""
    from dvc_data.hashfile.build import build

    odb = repo.cache.local
    _, _, tree = build(odb, str(folder), odb.fs, "md5", dry_run=True)
    return tree


def folder_md5(repo: Repo, folder: Path) -> str:
    return folder_tree(repo, folder).hash_info.value


def cache_dir(repo: Repo) -> str:
    return str(repo.cache.local_cache_dir)


def unkept(repo: Repo, tree: Tree) -> list[str]:
    """The objects of `tree` (its listing and its files) that neither the DVC cache nor the
    default remote holds: replacing the folder loses exactly these. The remote is asked only
    about what the cache lacks, so this is free for data that went through DVC here."""
    odb = repo.cache.local
    oids = [tree.hash_info.value, *(info.value for _, _, info in tree)]
    missing = [oid for oid in oids if not odb.exists(oid)]
    if not missing:
        return []
    url = remote_url(repo)
    try:
        on_remote = set(repo.cloud.get_remote_odb().list_oids_exists(missing))
    except Exception as err:  # each store fails its own way; all mean the copy cannot be confirmed
        raise StepError(f"cannot check what DVC remote {url} holds: {first_line(err)}") from None
    return [oid for oid in missing if oid not in on_remote]


def remote_url(repo: Repo) -> str:
    """The default remote's location, for messages; a StepError when there is none."""
    name = repo.config["core"].get("remote")
    if not name or name not in repo.config["remote"]:
        raise StepError(
            "no default DVC remote: add one with `dvc remote add -d <name> <url>`"
            " (see docs/how-to/version-data.md)"
        )
    url = str(repo.config["remote"][name]["url"])
    return os.path.expanduser(url) if "://" not in url else url


def check_remote_writable(repo: Repo) -> str:
    """Fail before anything changes when the default remote cannot take a push."""
    url = remote_url(repo)
    try:
        remote = repo.cloud.get_remote()
        probe = remote.fs.join(remote.path, ".sheldon-write-probe")
        remote.fs.makedirs(remote.path, exist_ok=True)
        remote.fs.pipe_file(probe, b"")
        remote.fs.rm_file(probe)
    except Exception as err:  # each store fails its own way; all mean no push is possible
        raise StepError(f"DVC remote {url} is not writable: {first_line(err)}") from None
    return url


def pull(repo: Repo, root: Path, md5: str) -> bool:
    """`dvc pull data.dvc`, made safe: download into the cache first (`dvc fetch`), and check out
    only once every file of version `md5` is there. False when the remote lacks some (data/raw
    untouched: DVC's own checkout would have deleted it). Any other failure is a StepError."""
    from dvc.exceptions import DvcException

    target = str(root / DVC_FILE)
    if not download_to_cache(repo, root, md5):
        return False
    try:
        repo.checkout(targets=[target], force=True)  # data/raw's own data is kept by DVC too
    except (DvcException, OSError) as err:
        raise StepError(f"cannot check out {DVC_FILE} from the DVC cache: {first_line(err)}") from None
    return True


def restore_pinned(raw_dir: Path) -> str:
    """Bring a missing or empty `raw_dir` (the folder data.dvc tracks) to the version data.dvc pins,
    from the DVC cache or the default remote: what a fresh clone of the repository needs when its
    tracking store already has the download_dataset run for that version. What it did, or '' when
    it cannot (the remote lacks the version; `raw_dir` holds files, which only the step may replace)."""
    root = REPO_ROOT
    if raw_dir.is_dir() and any(raw_dir.iterdir()):
        return ""
    try:
        if tracked_path(root) != raw_dir.resolve().relative_to(root.resolve()).as_posix():
            return ""
    except ValueError:  # outside the repository
        return ""
    repo = open_repo(root)
    md5 = read_pin(root).md5
    if not pull(repo, root, md5):
        return ""
    return f"pulled the data version {DVC_FILE} pins (md5 {md5}) from DVC remote {remote_url(repo)}"


def download_to_cache(repo: Repo, root: Path, md5: str, commit: str | None = None) -> bool:
    """Bring version `md5`, which data.dvc pins (at `commit`, if given), into the DVC cache from
    the default remote; nothing to do when the cache holds it. True once every file is there."""
    from dvc.exceptions import DvcException

    if complete_in_cache(repo, md5):
        return True
    url = remote_url(repo)
    dvc_log = logging.getLogger("dvc_data")
    level = dvc_log.level
    dvc_log.setLevel(logging.ERROR)  # its warning of missing objects: the caller says it in one line
    try:
        if commit:  # a path in the commit's tree, from its root: DVC takes a relative one from the
            # current folder, which is src/download_dataset when the step runs
            repo.fetch(targets=[f"/{DVC_FILE}"], revs=[commit], workspace=False)
        else:
            repo.fetch(targets=[str(root / DVC_FILE)])
    except (DvcException, OSError) as err:
        raise StepError(f"cannot pull data from DVC remote {url}: {first_line(err)}") from None
    finally:
        dvc_log.setLevel(level)
    return complete_in_cache(repo, md5)


def complete_in_cache(repo: Repo, md5: str) -> bool:
    """Whether the cache holds folder version `md5` and every file in it."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    odb = repo.cache.local
    if not odb.exists(md5):
        return False
    tree = Tree.load(odb, HashInfo("md5", md5))
    return all(odb.exists(info.value) for _, _, info in tree)


def commit_and_push(repo: Repo, root: Path, pin_path: str, source: str | None = None) -> str:
    """Record data/raw in data.dvc and the cache (`dvc commit`), push it; returns its md5.
    `source`: where this data came from, recorded as data.dvc's `meta: {source: ...}`
    (None: the recorded one stays)."""
    from dvc.exceptions import DvcException

    dvc_file = root / DVC_FILE
    if source is not None or not dvc_file.is_file():
        content = (
            yaml.safe_load(dvc_file.read_text()) if dvc_file.is_file() else {"outs": [{"path": pin_path}]}
        )
        if source is not None:
            content["meta"] = {**(content.get("meta") or {}), "source": source}
        dvc_file.write_text(yaml.safe_dump(content, sort_keys=False))  # dvc commit keeps `meta`
    url = remote_url(repo)
    try:
        repo.commit(str(dvc_file), force=True)
    except (DvcException, OSError) as err:
        raise StepError(f"cannot record {pin_path} in the DVC cache: {first_line(err)}") from None
    try:
        repo.push(targets=[str(dvc_file)])
    except (DvcException, OSError) as err:
        raise StepError(f"cannot push to DVC remote {url}: {first_line(err)}") from None
    return read_pin(root).md5


def write_version(repo: Repo, root: Path, commit: str, pin: Pin, target: Path) -> None:
    """Write the data that data.dvc pins at `commit` into `target`, through the DVC cache (so
    coming back to it later needs no remote)."""
    from dvc_data.hashfile.checkout import checkout
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    if not download_to_cache(repo, root, pin.md5, commit):
        raise StepError(
            f"DVC remote {remote_url(repo)} lacks data version {commit[:10]} (md5 {pin.md5}): "
            "push it from a machine that has it: git checkout <version> && dvc pull && dvc push"
        )
    odb = repo.cache.local
    checkout(str(target), odb.fs, Tree.load(odb, HashInfo("md5", pin.md5)), odb)


@contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """An empty folder beside `target` (same filesystem, so renames are atomic), removed after."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def replace_folder(target: Path, new: Path, keep: list[Path] | None = None) -> Iterator[None]:
    """Swap `new` in as `target`. If the block raises, the previous `target` and the files in
    `keep` (e.g. data.dvc) are put back as they were; otherwise the previous one is deleted."""
    saved = {path: path.read_bytes() if path.is_file() else None for path in keep or []}
    backup = target.with_name(f".{target.name}.previous-{os.getpid()}")
    had_target = target.exists()
    if had_target:
        os.replace(target, backup)
    os.replace(new, target)
    try:
        yield
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if had_target:
            os.replace(backup, target)
        for path, content in saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        raise
    if had_target:
        shutil.rmtree(backup, ignore_errors=True)
