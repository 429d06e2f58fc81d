"""Step cache keys, in the spirit of DVC's dvc.lock: a step's key hashes everything its outputs
depend on (its code and the shared code it imports, its resolved parameters, the digests of its
inputs, the pinned dependency set), so a finished run with the same key can stand in for it."""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import mlflow
import tomllib

from sheldon.paths import REPO_ROOT
from sheldon.vocabulary import DIGEST_TAG, KEY_TAG, STEP_TAG, UNCACHEABLE_TAG

_LIBRARY = Path(__file__).resolve().parent
_SKIPPED = {"__pycache__", ".pytest_cache", ".ruff_cache"}


def _hash_files(paths: Iterable[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@cache  # each step imports mostly the same modules: parse each once per process
def _library_imports(source: Path) -> frozenset[str]:
    """The sheldon modules a Python file imports (`import sheldon.x`, `from sheldon.x import y`)."""
    modules = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sheldon"):
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.startswith("sheldon"))
    return frozenset(modules)


def _module_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    for candidate in (_LIBRARY.joinpath(*parts).with_suffix(".py"), _LIBRARY.joinpath(*parts, "__init__.py")):
        if parts and candidate.is_file():
            return candidate
    return None


@cache
def shared_code(entry: Path) -> frozenset[Path]:
    """The library files `entry` depends on, following imports transitively."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        for module in _library_imports(todo.pop()):
            path = _module_file(module)
            if path is not None and path not in seen:
                seen.add(path)
                todo.append(path)
    return frozenset(seen)


def code_digest(step_dir: Path) -> str:
    """Digest of a step's own files (MLproject, conda.yml, scripts) and the library code they import."""
    own = [
        p for p in step_dir.rglob("*") if p.is_file() and not _SKIPPED & set(p.parts) and p.suffix != ".pyc"
    ]
    library = set().union(*(shared_code(p) for p in own if p.suffix == ".py"))
    return hashlib.sha256((_hash_files(own, step_dir) + _hash_files(library, _LIBRARY)).encode()).hexdigest()


def dependency_digest() -> str:
    """Digest of the pinned dependency set in pyproject.toml."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return hashlib.sha256(json.dumps(sorted(project["dependencies"])).encode()).hexdigest()


def cache_key(
    step: str, code: str, params: Mapping[str, str], inputs: Mapping[str, str], extra: Mapping[str, str]
) -> str:
    """The key of one step run: code digest, parameters (input URIs excluded: their digests stand
    in for them), input digests, dependency set and any extra state the step depends on."""
    payload = {
        "step": step,
        "code": code,
        "params": dict(params),
        "inputs": dict(inputs),
        "deps": dependency_digest(),
        "extra": dict(extra),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def output_digest(run: mlflow.entities.Run, artifact: str) -> str:
    """The content digest a run recorded for an output, or its run id where it recorded none
    (a new run of the producer then always counts as new input)."""
    return run.data.tags.get(DIGEST_TAG + artifact.split("/")[0]) or f"run:{run.info.run_id}/{artifact}"


def finished_runs(experiment_id: str, tag: str, value: str, most: int = 10) -> list[mlflow.entities.Run]:
    """FINISHED runs of the experiment whose `tag` is `value`, newest first."""
    return mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=most,
        output_format="list",
    )


def find_cached_run(experiment_id: str, key: str) -> mlflow.entities.Run | None:
    """The latest FINISHED run with this key; running, failed and killed runs never count."""
    runs = finished_runs(experiment_id, KEY_TAG, key)
    return next((run for run in runs if UNCACHEABLE_TAG not in run.data.tags), None)


def any_cached_run(experiment_id: str, step: str) -> bool:
    """Whether any finished run of `step` has a cache key: without one, no key can match."""
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{STEP_TAG}` = '{step}' and tags.`{KEY_TAG}` LIKE '%' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
        output_format="list",
    )
    return bool(found)


@contextmanager
def key_lock(
    key: str, waiting: str = "another pipeline runs this step with the same inputs: waiting to reuse it"
) -> Iterator[None]:
    """Hold the machine-wide lock of a cache key while a pipeline looks the key up and runs or
    reuses its step, so that pipelines running at once (Hydra's joblib launcher) run a step once
    and the others find it cached. Released when the process ends, however it ends. `waiting`:
    what a pipeline that has to wait for it says."""
    folder = Path(tempfile.gettempdir()) / "sheldon-locks"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{key}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  ({waiting})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
