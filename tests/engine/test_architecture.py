"""The library's shape, kept by tests: no import circles, the layers core < step < data < training
< serving < engine, steps that never reach the engine, a docstring on each package, and step cache
keys that cover exactly the code a step imports. Imports are read as the step cache reads them
(sheldon.engine.cache.library_imports), lazy ones inside functions included."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.checkout import MACHINE_LOCAL, REPO

from sheldon.engine.cache import LIBRARY, library_imports, module_file, shared_code

LAYERS = ["core", "step", "data", "training", "serving", "engine"]  # each imports only its own or lower
STEP_DIRS = sorted(p.parent for p in (REPO / "src").glob("*/MLproject"))


def module_name(path: Path) -> str:
    """`sheldon.training.loop` for src/sheldon/training/loop.py; a package is its __init__.py."""
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each library module -> the library modules it imports."""
    return {
        module_name(path): {
            module_name(found) for module in library_imports(path) if (found := module_file(module))
        }
        - {module_name(path)}
        for path in sorted(LIBRARY.rglob("*.py"))
    }


def layer(module: str) -> int:
    """A module's layer; sheldon/__init__.py lies below them all (every import executes it)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def circle_through(graph: dict[str, set[str]], component: list[str]) -> str:
    """One import circle inside a component, as `a -> b -> a`."""
    inside = set(component)
    path = [component[0]]
    while path.count(path[-1]) < 2:
        path.append(min(graph[path[-1]] & inside))
    return " -> ".join(path[path.index(path[-1]) :])


def test_no_import_circles():
    graph = import_graph()
    found = [circle_through(graph, component) for component in circles(graph)]
    assert not found, "import circles: " + "; ".join(found)


def test_each_module_imports_only_its_own_layer_or_lower():
    graph = import_graph()
    against = [
        f"{module} -> {imported}"
        for module, imports in sorted(graph.items())
        for imported in sorted(imports)
        if layer(imported) > layer(module)
    ]
    assert not against, f"imports against the layers {' < '.join(LAYERS)}: " + "; ".join(against)


def test_no_step_reaches_the_engine():
    assert STEP_DIRS, "no step folders found"
    engine = LIBRARY / "engine"
    doors = set()  # the arrows by which a step's code reaches the engine
    for step in STEP_DIRS:
        for script in step.rglob("*.py"):
            for path in {script} | shared_code(script):
                if not path.is_relative_to(engine):
                    doors.update(
                        f"src/{step.name} via {path.relative_to(REPO).as_posix()} -> {module}"
                        for module in library_imports(path)
                        if (found := module_file(module)) and found.is_relative_to(engine)
                    )
    assert not doors, "steps reach sheldon.engine: " + "; ".join(sorted(doors))


def test_each_package_says_its_job():
    missing = [
        init.relative_to(REPO).as_posix()
        for init in sorted(LIBRARY.rglob("__init__.py"))
        if len((ast.get_docstring(ast.parse(init.read_text())) or "").split()) < 5
    ]
    assert not missing, f"packages without a docstring that says their job: {missing}"


# What the library's own digests look like to a step: computed by the real cache module in a
# copy, in its own process, so that the copy's files are the ones it reads.
DIGESTS = """
import json, sys
from pathlib import Path
from sheldon.engine.cache import key_parts
steps = [Path(p) for p in sys.argv[1:]]
parts = {s.name: key_parts(s.name, s, {}, {}, {}) for s in steps}
print(json.dumps({name: {"code": p.code, "key": p.key} for name, p in parts.items()}))
"""


def step_digests(copy: Path) -> dict[str, dict]:
    """Each step's code digests and key (the same params, inputs and state) in the copy."""
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "SHELDON_ROOT": str(copy)}
    steps = [str(copy / "src" / step.name) for step in STEP_DIRS]
    result = subprocess.run(
        [sys.executable, "-c", DIGESTS, *steps], env=env, cwd=copy, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def changed(before: dict[str, dict], after: dict[str, dict]) -> dict[str, list[str]]:
    """Step -> the files whose digest changed, for the steps whose key changed."""
    return {
        step: sorted(f for f in after[step]["code"] if before[step]["code"].get(f) != after[step]["code"][f])
        for step in before
        if before[step]["key"] != after[step]["key"]
    }


def append_comment(path: Path) -> None:
    path.write_text(path.read_text() + "# an edit\n")


def test_a_steps_key_covers_only_the_code_it_imports(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "src", copy / "src", ignore=shutil.ignore_patterns(*MACHINE_LOCAL))
    shutil.copy(REPO / "pyproject.toml", copy)  # the pinned dependencies, part of the key
    original = step_digests(copy)
    assert {"train_model", "evaluate"} <= original.keys()

    append_comment(copy / "src/sheldon/engine/runner.py")
    append_comment(copy / "src/sheldon/training/loop.py")
    edited = step_digests(copy)
    assert changed(original, edited) == {"train_model": ["src/sheldon/training/loop.py"]}

    append_comment(copy / "src/sheldon/core/errors.py")
    assert changed(edited, step_digests(copy)) == dict.fromkeys(original, ["src/sheldon/core/errors.py"])
