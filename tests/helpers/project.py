"""A temporary copy of the repository whose pipeline runs for real, with its own tracking db
and W&B folder; the steps' modules loaded by path; and readers of what a run said and
logged. (Plain Python, no pytest: benchmarks/ imports it too.)"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import mlflow
from helpers.checkout import REPO, copy_repo

BIN = Path(sys.executable).parent
SHRUNK = "train_model.epochs=1 evaluate.min_accuracy=0.5"  # a tiny CPU run
STEPS = ["download_dataset", "preprocess", "train_model", "evaluate"]  # what `all` runs


def load_step(step: str, root: Path = REPO, script: str = "run.py") -> ModuleType:
    """Import src/<step>/<script> under a unique module name, so tests call its functions."""
    path = root / "src" / step / script
    spec = importlib.util.spec_from_file_location(f"step_{step}_{abs(hash(root))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Project:
    """A temporary copy of the repo with its own tracking store and W&B folder."""

    root: Path
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    def run(self, *args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(
            list(args), cwd=cwd or self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        result.output = result.stdout + result.stderr  # type: ignore[attr-defined]
        return result

    def mlflow_run(self, *params: str, hydra_options: str | None = None) -> subprocess.CompletedProcess:
        """`mlflow run . --env-manager local` with `-P` params, as a user types it."""
        args = ["mlflow", "run", ".", "--env-manager", "local"]
        for param in params:
            args += ["-P", param]
        if hydra_options is not None:
            args += ["-P", f"hydra_options={hydra_options}"]
        return self.run(*args)

    def mlflow_step(self, step: str, *args: str) -> subprocess.CompletedProcess:
        """`mlflow run src/<step> --env-manager local` with more arguments: one step on its own."""
        result = self.run("mlflow", "run", f"src/{step}", "--env-manager", "local", *args)
        assert "Traceback" not in result.output, result.output[-3000:]
        return result

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def runs(self, experiment: str = "sheldon") -> list:
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])

    def step_runs(self, step: str | None = None) -> list:
        return [
            r
            for r in self.runs()
            if "sheldon.step" in r.data.tags and (step is None or r.data.tags["sheldon.step"] == step)
        ]

    def wandb_runs(self) -> list[Path]:
        return sorted((self.home / "wandb-dir" / "wandb").glob("offline-run-*"))


def make_project(tmp: Path) -> Project:
    root = copy_repo(tmp / "repo", REPO)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_", "SHELDON_"))}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "WANDB_DIR": str(tmp / "wandb-dir"),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
    }
    (tmp / "wandb-dir").mkdir()
    return Project(root=root, home=tmp, env=env)


def wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run (what `wandb sync` would upload), read from its .wandb
    file: W&B's 7-byte header, then LevelDB-style log records in 32 KiB blocks, each a protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("*.wandb")).read_bytes()
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def said(stderr: str) -> list[str]:
    """What a command said to its user on stderr: its lines without MLflow's INFO log records."""
    logged = re.compile(r"\d{4}/\d\d/\d\d [\d:]+ INFO ")
    return [line for line in stderr.strip().splitlines() if not logged.match(line)]


def parse_table(table: str) -> list[dict[str, str]]:
    """The rows of a table as sheldon prints them (sheldon.core.output.text_table), by column: the columns
    are cut where the dashes under the header are."""
    header, dashes, *lines = table.strip("\n").splitlines()
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", dashes)]
    spans[-1] = (spans[-1][0], None)
    names = [header[a:b].strip() for a, b in spans]
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)} for line in lines]


def summary_status(output: str) -> dict[str, str]:
    """Each step's status in a pipeline's summary table: ran, cached, pinned or failed."""
    return {
        line.split()[0]: line.split()[1]
        for line in output.splitlines()
        if line.split()[:1] and line.split()[0] in STEPS and len(line.split()) > 2
    }


def default_experiment_is_empty(project: Project) -> bool:
    """Whether Default holds no run, once `mlflow run` has exited and its own run is deleted."""
    deadline = time.time() + 30
    while project.client().search_runs(["0"]) and time.time() < deadline:
        time.sleep(0.5)
    return project.client().search_runs(["0"]) == []


def pipeline(project, *overrides: str):
    """`python main.py` with the shrunk config plus overrides; returns (result, new step runs)."""
    before = {r.info.run_id for r in project.step_runs()}
    result = project.run("python", "main.py", *SHRUNK.split(), *overrides)
    new = [r for r in project.step_runs() if r.info.run_id not in before]
    return result, new


def ran(new_runs) -> list[str]:
    return [r.data.tags["sheldon.step"] for r in new_runs]
