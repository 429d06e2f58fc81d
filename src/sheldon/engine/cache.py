"""Step cache keys, in the spirit of DVC's dvc.lock: a step's key hashes everything its outputs
depend on (its code and the shared code it imports, its resolved parameters, the digests of its
inputs, the pinned dependency set), so a finished run with the same key can stand in for it. Each
run records those parts (KEY_PARTS_TAG), so that a later pipeline can say why it does not reuse it."""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import mlflow
import tomllib

from sheldon.core.paths import REPO_ROOT
from sheldon.core.vocabulary import DIGEST_TAG, KEY_PARTS_TAG, KEY_TAG, STEP_TAG, UNCACHEABLE_TAG

LIBRARY = Path(__file__).resolve().parents[1]  # src/sheldon
_SKIPPED = {"__pycache__", ".pytest_cache", ".ruff_cache"}


@cache  # each step imports mostly the same modules: parse each once per process
def library_imports(source: Path) -> frozenset[str]:
    """The sheldon modules a Python file imports, lazy imports inside functions included
    (`import sheldon.x`, `from sheldon.x import y`: both sheldon.x and sheldon.x.y, which
    module_file finds only where y is a module). The one reading of imports: the step cache and
    the architecture tests (tests/engine/test_architecture.py) both use it."""
    modules = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sheldon":
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.split(".")[0] == "sheldon")
    return frozenset(modules)


def module_file(module: str) -> Path | None:
    """The library file that defines a sheldon module (a package: its __init__.py); None for a
    name that is no module (`sheldon.core.errors.StepError`)."""
    parts = module.split(".")[1:]
    for candidate in (LIBRARY.joinpath(*parts).with_suffix(".py"), LIBRARY.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def executed_files(module: str) -> list[Path]:
    """The library files Python executes to import `module`: each enclosing package's __init__.py
    first (sheldon/__init__.py, sheldon/a/__init__.py for sheldon.a.b), then the module's own."""
    parts = module.split(".")
    found = (module_file(".".join(parts[:n])) for n in range(1, len(parts) + 1))
    return [path for path in found if path is not None]


@cache
def shared_code(entry: Path) -> frozenset[Path]:
    """The library files importing `entry` executes, following imports transitively (those of
    the package __init__s on the way too: sheldon/training/__init__.py imports all of training)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        for module in library_imports(todo.pop()):
            for path in executed_files(module):
                if path not in seen:
                    seen.add(path)
                    todo.append(path)
    return frozenset(seen)


def code_digests(step_dir: Path) -> dict[str, str]:
    """The digest of each of a step's own files (MLproject, conda.yml, scripts) and of the library
    files they import, named as the repository names them (`src/evaluate/run.py`,
    `src/sheldon/training/loop.py`) wherever the library is installed."""
    own = [
        p for p in step_dir.rglob("*") if p.is_file() and not _SKIPPED & set(p.parts) and p.suffix != ".pyc"
    ]
    library = set().union(*(shared_code(p) for p in own if p.suffix == ".py"))
    named = {f"src/{step_dir.name}/{p.relative_to(step_dir).as_posix()}": p for p in own}
    named |= {f"src/{LIBRARY.name}/{p.relative_to(LIBRARY).as_posix()}": p for p in library}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sorted(named.items())}


def dependency_digest() -> str:
    """Digest of the pinned dependency set in pyproject.toml."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return hashlib.sha256(json.dumps(sorted(project["dependencies"])).encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class KeyParts:
    """What one step run's cache key hashes, part by part: recorded on the run, so that a later
    pipeline can say which part changed (sheldon/engine/explain.py)."""

    step: str
    code: dict[str, str]  # each file of its code and of the library code it imports -> its digest
    params: dict[str, str]  # resolved parameters (input URIs excluded: their digests stand in for them)
    inputs: dict[str, str]  # input parameter -> the digest of the output it reads
    deps: str  # the pinned dependency set (dependency_digest)
    state: dict[str, str]  # repo files outside src/<step> its outputs depend on (data.dvc) -> digest

    @property
    def key(self) -> str:
        return hashlib.sha256(self.record().encode()).hexdigest()

    def record(self) -> str:
        """The parts as the run's KEY_PARTS_TAG holds them (compact JSON)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def recorded_on(cls, run: mlflow.entities.Run) -> KeyParts | None:
        """The parts a run recorded; None for a run made before runs recorded them."""
        record = run.data.tags.get(KEY_PARTS_TAG)
        return cls(**json.loads(record)) if record else None


def key_parts(
    step: str, step_dir: Path, params: Mapping[str, str], inputs: Mapping[str, str], state: Mapping[str, str]
) -> KeyParts:
    """The parts of a step run's key: `inputs` are the digests of its inputs, `state` those of the
    repo files outside its folder that it depends on."""
    return KeyParts(
        step=step,
        code=code_digests(step_dir),
        params=dict(params),
        inputs=dict(inputs),
        deps=dependency_digest(),
        state=dict(state),
    )


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


NEVER_RAN = "never ran"
NO_RECORD = "no record of its key (run before this version)"
FILES_NAMED = 3  # the changed files a reason names before counting the rest


def why_not_cached(
    experiment_id: str,
    parts: KeyParts,
    section: str,
    sources: Mapping[str, str],
    pending: Mapping[str, str] | None = None,
) -> str:
    """Why no finished run of the step has this key: what differs from the step's latest finished
    run that could be reused (a fresh download cannot), the one a user expects. `section`: the
    step's config.yaml section; `sources`: input parameter -> where it comes from (`preprocess run
    1a2b3c4d (cached, same config)`); `pending`: the inputs left out of `parts` because their
    producer's output is not known yet (main.plan), each with why (`input from preprocess, which
    runs`)."""
    waiting = list(dict.fromkeys((pending or {}).values()))
    runs = finished_runs(experiment_id, STEP_TAG, parts.step)
    if not runs:
        return "; ".join([*waiting, NEVER_RAN])
    latest = next((run for run in runs if UNCACHEABLE_TAG not in run.data.tags), None)
    if latest is None:
        return "; ".join(
            [*waiting, f"its latest runs are not reusable: {runs[0].data.tags[UNCACHEABLE_TAG]}"]
        )
    before = KeyParts.recorded_on(latest)
    if before is None:
        return "; ".join([*waiting, NO_RECORD])
    changes = waiting + changes_between(before, parts, section, sources, skip=set(pending or ()))
    # the same parts: its pipeline was killed before it could give the run its key
    return "; ".join(changes) or f"its latest run {latest.info.run_id[:8]} never got its key"


def changes_between(
    before: KeyParts, now: KeyParts, section: str, sources: Mapping[str, str], skip: set[str]
) -> list[str]:
    """What differs between two sets of key parts, in words, inputs first (what the steps before
    changed); inputs in `skip` are not compared."""
    changes = [
        f"new input: {name} <- {sources.get(name, 'nothing')}"
        for name in sorted((before.inputs.keys() | now.inputs.keys()) - skip)
        if before.inputs.get(name) != now.inputs.get(name)
    ]
    changes += [
        f"{section}.{name}: {before.params.get(name, '(unset)')} -> {now.params.get(name, '(unset)')}"
        for name in sorted(before.params.keys() | now.params.keys())
        if before.params.get(name) != now.params.get(name)
    ]
    files = [
        f"{name} {'added' if name not in before.code else 'removed' if name not in now.code else 'changed'}"
        for name in sorted(before.code.keys() | now.code.keys())
        if before.code.get(name) != now.code.get(name)
    ]
    more = len(files) - FILES_NAMED
    changes += files[:FILES_NAMED] + ([f"{more} more files changed"] if more > 0 else [])
    if before.deps != now.deps:
        changes.append("pinned dependencies changed (pyproject.toml)")
    changes += [
        f"{name} changed"
        for name in sorted(before.state.keys() | now.state.keys())
        if before.state.get(name) != now.state.get(name)
    ]
    return changes
