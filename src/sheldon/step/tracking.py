"""One context manager opens a step's MLflow run and W&B run together and closes both,
whatever happens inside; StepRun logs everything to both trackers at once."""

from __future__ import annotations

import base64
import functools
import json
import netrc
import os
import re
import sqlite3
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from itertools import pairwise
from pathlib import Path
from typing import Any

import mlflow
import psutil
import yaml
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID

from sheldon.core.errors import StepError, shorten
from sheldon.core.paths import REPO_ROOT
from sheldon.core.processes import PIPELINE_ENV, Interrupted, process_token, when_gone
from sheldon.core.vocabulary import (
    DATA_MD5_TAG,
    DATA_SOURCE_TAG,
    DIGEST_TAG,
    ERROR_TAG,
    GIT_COMMIT_TAG,
    HEADLINE_TAG,
    INPUT_TAG,
    NOTE_TAG,
    PARENT_RUN_TAG,
    PROCESS_TAG,
    RUN_NAME_TAG,
    STEP_TAG,
    STOPPED_TAG,
    TRIAL_ENV,
    UNCACHEABLE_TAG,
    parse_runs_uri,
    runs_uri,
)
from sheldon.step.artifacts import digest_path, fetch_artifact
from sheldon.step.run_inputs import log_input_dataset
from sheldon.step.settings import StepSettings
from sheldon.step.store import tracking_environment

DEFAULT_PROJECT = "sheldon"
_DELETE_RUN = "import mlflow, sys; mlflow.MlflowClient().delete_run(sys.argv[1])"
WANDB_SETTLED = "SHELDON_WANDB_MODE"  # equals WANDB_MODE when sheldon chose it, not the user


def configure_tracking() -> str:
    """Point this process and its children at one absolute tracking URI and quiet the trackers."""
    uri = tracking_environment()
    mlflow.set_tracking_uri(uri)
    return uri


def allow_concurrent_runs(uri: str) -> None:
    """Put a sqlite tracking db in WAL mode (kept in the file), so pipelines running side by side
    read while another writes instead of failing with "database is locked"."""
    if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).is_file():
        with sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=30) as db:
            db.execute("PRAGMA journal_mode=WAL")


def wandb_unusable(base_url: str, key: str, timeout: float = 5.0) -> str:
    """Why W&B at base_url cannot take runs with this API key ('' when it can): one tiny
    authenticated GraphQL query, answered within `timeout` seconds in all (name lookup included)."""
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/graphql",
        data=json.dumps({"query": "{ viewer { id } }"}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode(),
        },
    )
    verdict = [f"is unreachable (no answer in {timeout:g} s)"]

    def ask() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                verdict[0] = ""
        except urllib.error.HTTPError as err:
            rejected = err.code in (401, 403)
            verdict[0] = f"{'rejected the API key' if rejected else 'is unusable'} (HTTP {err.code})"
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)  # urllib wraps connection errors in URLError
            if not isinstance(reason, TimeoutError):
                verdict[0] = f"is unreachable ({getattr(reason, 'strerror', None) or reason})"

    # A socket timeout bounds each wait, not their sum, nor the name lookup: a daemon thread does.
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout)
    return verdict[0]


def trial_config() -> dict[str, str]:
    """A sweep trial's overrides, for its steps' W&B config (empty outside a sweep)."""
    return {"trial": os.environ[TRIAL_ENV]} if os.environ.get(TRIAL_ENV) else {}


def settle_wandb_mode() -> str:
    """Decide W&B's mode once, for this process and the step processes it starts (exported as
    WANDB_MODE): online with an API key (WANDB_API_KEY or `wandb login`'s netrc) that W&B accepts,
    offline otherwise, saying so in one line when a key was there. WANDB_MODE set by the user wins;
    a WANDB_MODE=online that cannot work raises StepError."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode and (mode != "online" or os.environ.get(WANDB_SETTLED) == mode):
        return mode
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = base_url.split("://")[-1].rstrip("/")
    key = os.environ.get("WANDB_API_KEY", "")
    if not key:
        with suppress(FileNotFoundError, netrc.NetrcParseError):
            key = (netrc.netrc().authenticators(host) or (None, None, ""))[2] or ""
    problem = wandb_unusable(base_url, key) if key else ""
    if problem and mode == "online":
        raise StepError(
            f"W&B at {host} {problem} and WANDB_MODE=online: check the key (`wandb login --relogin`) "
            "and WANDB_BASE_URL, or unset WANDB_MODE to log offline"
        )
    if problem:
        print(
            f"W&B at {host} {problem}: logging offline instead (upload later with `wandb sync`)",
            file=sys.stderr,
        )
        mode = "offline"
    mode = mode or ("online" if key else "offline")
    os.environ["WANDB_MODE"] = os.environ[WANDB_SETTLED] = mode
    return mode


def wandb_reference(uri: str) -> str:
    """The W&B artifact behind an MLflow `runs:/<run id>/<name>` URI: every artifact a step logs
    carries its MLflow run id as an alias. Empty for other URIs."""
    parsed = parse_runs_uri(uri)
    if parsed is None or not re.fullmatch(r"[\w.-]+", parsed[1]):
        return ""
    run_id, name = parsed
    return f"{name}:mlflow-{run_id}"


@functools.cache
def configured(section: str) -> dict[str, Any]:
    """A section of the repo's config.yaml as written (no Hydra: a step on its own needs only a
    few plain values of it, such as main.experiment_name and its own inputs)."""
    path = REPO_ROOT / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise StepError(f"cannot read {path}: {shorten(err)}") from None
    return config.get(section) or {}


def missing_inputs(step: str, params: Mapping[str, Any], inputs: Iterable[str] = ()) -> str:
    """What to give a step started without the URI of an input, one its settings declare
    (`inputs`) or config.yaml does (`<step>.inputs`, which also names the upstream artifact), as
    one line; '' when none is missing."""
    sources = configured(step).get("inputs") or {}
    declared = dict.fromkeys([*inputs, *sources])
    missing = [name for name in declared if name in params and not params[name]]
    if not missing:
        return ""
    flag = "-P {}=" if os.environ.get("MLFLOW_RUN_ID") else "--{} "  # `mlflow run`, or run.py itself

    def example(name: str) -> str:
        if name not in sources:
            return runs_uri("<run id>", "<artifact>")
        parts = str(sources[name]).split("/")
        return runs_uri(f"<{parts[0]} run id>", parts[-1])

    uris = " ".join(flag.format(name) + example(name) for name in missing)
    return (
        f"{step} needs {' and '.join(missing)}: {uris} (run ids are in the MLflow UI and a "
        f"pipeline's summary), or let the pipeline find {'it' if len(missing) == 1 else 'them'}: "
        f"mlflow run . --env-manager local -P steps={step}"
    )


def standalone_experiment(launch: mlflow.entities.Run | None) -> str | None:
    """The experiment id a step launched on its own moves to: config.yaml's main.experiment_name
    when its run would land in Default (`mlflow run src/<step>` without --experiment-name, or run.py
    itself). None when a pipeline launched it or the user chose the experiment (--experiment-name,
    MLFLOW_EXPERIMENT_NAME, MLFLOW_EXPERIMENT_ID: `mlflow run` turns the first into the last)."""
    if PIPELINE_ENV in os.environ or os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return None
    current = (
        launch.info.experiment_id
        if launch
        else os.environ.get("MLFLOW_EXPERIMENT_ID") or DEFAULT_EXPERIMENT_ID
    )
    if current != DEFAULT_EXPERIMENT_ID:
        return None
    name = str(configured("main").get("experiment_name") or "")
    if not name:
        raise StepError(f"{REPO_ROOT / 'config.yaml'} sets no main.experiment_name")
    experiment = mlflow.set_experiment(name)
    return experiment.experiment_id if experiment.experiment_id != current else None


def open_step_run(step: str, params: Mapping[str, Any], inputs: Iterable[str] = ()) -> mlflow.ActiveRun:
    """The step's MLflow run, named after the step: the run `mlflow run` created for it, or, for a
    step launched on its own into Default, a new run in the configured experiment that takes the
    launch run's tags (source, git commit) and parameters. A run cannot move between experiments,
    so the launch run is then deleted: Default keeps nothing. A missing input stops the step
    before any run is opened."""
    client = mlflow.MlflowClient()
    launch_id = os.environ.get("MLFLOW_RUN_ID")
    launch = client.get_run(launch_id) if launch_id else None
    experiment_id = standalone_experiment(launch)
    if problem := missing_inputs(step, params, inputs):
        if launch and experiment_id:
            delete_launcher_run(launch.info.run_id)
        raise StepError(problem)
    if experiment_id is None:
        return mlflow.start_run(run_name=step)  # names the launch run too
    os.environ.pop("MLFLOW_RUN_ID", None)  # or start_run would resume the launch run
    tags = {k: v for k, v in launch.data.tags.items() if k != RUN_NAME_TAG} if launch else {}
    active = mlflow.start_run(experiment_id=experiment_id, run_name=step, tags=tags)
    if launch:
        mlflow.log_params(launch.data.params)
        delete_launcher_run(launch.info.run_id)
        name = mlflow.get_experiment(experiment_id).name
        print(
            f"{step}: run {active.info.run_id} in experiment {name!r} (config.yaml "
            f"main.experiment_name); `mlflow run`'s own run {launch_id} in Default goes when it exits"
        )
    return active


def discard_standalone_launch() -> None:
    """A step launched on its own that stops before its run opens (a bad parameter) leaves no
    FAILED run of `mlflow run`'s in Default."""
    launch_id = os.environ.get("MLFLOW_RUN_ID")
    if launch_id and standalone_experiment(mlflow.MlflowClient().get_run(launch_id)) is not None:
        delete_launcher_run(launch_id)


def delete_launcher_run(run_id: str) -> None:
    """Delete the run `mlflow run` opened for this launch, once that `mlflow run` has exited: its
    last act is to set the run's status, and on a deleted run that raises (a traceback). Without
    such a process above this one, at once."""
    cli = next((p for p in psutil.Process().parents() if _is_mlflow_run(p.cmdline())), None)
    if cli is None:
        mlflow.MlflowClient().delete_run(run_id)
    else:
        when_gone(cli.pid, [sys.executable, "-c", _DELETE_RUN, run_id])


def _is_mlflow_run(argv: list[str]) -> bool:
    return any(Path(word).name == "mlflow" and then == "run" for word, then in pairwise(argv))


class StepRun:
    """The open MLflow and W&B runs of one step."""

    def __init__(self, step: str, mlflow_run: mlflow.ActiveRun, wandb_run: Any) -> None:
        self.step = step
        self.run_id = mlflow_run.info.run_id
        self.wandb = wandb_run
        self.dataset: MetaDataset | None = None  # the first data input: what its metrics are computed on

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters the run does not already carry (`mlflow run` logs its own)."""
        logged = mlflow.get_run(self.run_id).data.params
        fresh = {k: v for k, v in params.items() if k not in logged}
        if fresh:
            mlflow.log_params(fresh)
        self.wandb.config.update(dict(params), allow_val_change=True)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None
    ) -> None:
        """Log metrics of the run (and of MLflow logged model `model_id`, when given), linked to the
        step's data input (a logged model's "Datasets used")."""
        values = {k: float(v) for k, v in metrics.items()}
        mlflow.log_metrics(values, step=step, model_id=model_id, dataset=self.dataset)
        self.wandb.log(dict(metrics) if step is None else {**metrics, "epoch": step})

    def headline(self, name: str, value: float) -> None:
        """Log the one metric the pipeline summary shows for this step."""
        mlflow.set_tag(HEADLINE_TAG, name)
        self.log_metrics({name: value})

    def note(self, text: str) -> None:
        """A one-line verdict of the step, shown under the pipeline's summary when it ran."""
        mlflow.set_tag(NOTE_TAG, text)
        self.wandb.summary["note"] = text

    def fetch_input(self, name: str, uri: str) -> Path:
        """Download an input artifact (any MLflow artifact URI) and record where it came from: a
        tag, W&B's config or lineage, and, for data, an MLflow dataset."""
        mlflow.set_tag(INPUT_TAG + name, uri)
        reference = wandb_reference(uri)
        # Offline the reference is recorded in the config (use_artifact raises offline), ready for sync.
        self.wandb.config.update(
            {f"input.{name}": uri, f"input.{name}.wandb": reference}, allow_val_change=True
        )
        if self.wandb.settings.mode == "online" and reference:
            try:  # W&B draws the pipeline graph from this
                self.wandb.use_artifact(reference)
            except Exception as err:  # e.g. the producer ran without W&B
                print(f"W&B: cannot link input {reference} ({err})", file=sys.stderr)
        fetched = fetch_artifact(uri)
        dataset = log_input_dataset(name, uri, fetched)
        self.dataset = self.dataset or dataset
        return fetched

    def log_artifact(
        self, local_path: Path, name: str, kind: str, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Log a file or folder as artifact `name` in MLflow and W&B; returns its MLflow URI."""
        local_path = Path(local_path)
        if local_path.is_dir():
            mlflow.log_artifacts(str(local_path), artifact_path=name)
        else:
            mlflow.log_artifact(str(local_path), artifact_path=name)
        self._log_wandb_artifact(local_path, name, kind, metadata)
        return runs_uri(self.run_id, name)

    def log_logged_model(self, model_uri: str, name: str) -> None:
        """Give W&B, as a `model` artifact named `name`, the MLflow 3 logged model at `model_uri`
        (`models:/<id>`: it lives beside the run's artifacts, not among them), so that W&B holds
        the same outputs as MLflow and `<name>:mlflow-<run id>` resolves there."""
        self._log_wandb_artifact(fetch_artifact(model_uri), name, "model", {"mlflow_model_uri": model_uri})

    def _log_wandb_artifact(
        self, local_path: Path, name: str, kind: str, metadata: Mapping[str, Any] | None
    ) -> None:
        """The W&B side of an output MLflow holds: an artifact whose alias names this MLflow run,
        and the output's content digest as a tag (downstream cache keys see content)."""
        import wandb

        artifact = wandb.Artifact(name, type=kind, metadata=dict(metadata or {}))
        if local_path.is_dir():
            artifact.add_dir(str(local_path))
        else:
            artifact.add_file(str(local_path))
        self.wandb.log_artifact(artifact, aliases=["latest", f"mlflow-{self.run_id}"])
        mlflow.set_tag(DIGEST_TAG + name, digest_path(local_path))

    def not_cacheable(self, reason: str) -> None:
        """Mark this run as never to be reused by the step cache (its output depends on more
        than its code, parameters and inputs, e.g. a fresh download)."""
        mlflow.set_tag(UNCACHEABLE_TAG, reason)

    def log_figure(self, figure: Any, filename: str) -> None:
        """Log a matplotlib figure as a PNG in MLflow and as an image in W&B, rendered once."""
        import wandb

        folder = Path(filename).parent.as_posix()
        with tempfile.TemporaryDirectory(prefix="sheldon-figure-") as tmp:
            png = Path(tmp) / Path(filename).name
            figure.savefig(png)
            mlflow.log_artifact(str(png), artifact_path=None if folder == "." else folder)
            self.wandb.log({png.stem: wandb.Image(str(png))})

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a table: JSON in MLflow, a W&B Table in W&B."""
        import wandb

        mlflow.log_table({c: [r[i] for r in rows] for i, c in enumerate(columns)}, f"{name}.json")
        self.wandb.log({name: wandb.Table(columns=columns, data=rows)})


@contextmanager
def step_run(
    step: str, params: Mapping[str, Any] | StepSettings, job_type: str | None = None
) -> Iterator[StepRun]:
    """Open the step's MLflow run (the one `mlflow run` created, or a new one) and its W&B run,
    logging the step's settings (or `params`) as its parameters; on any exception both are marked
    failed and closed before the exception propagates."""
    import wandb

    inputs = params.inputs() if isinstance(params, StepSettings) else []
    params = params.values() if isinstance(params, StepSettings) else params
    configure_tracking()
    mode = settle_wandb_mode()
    with open_step_run(step, params, inputs) as active:
        wandb_run = None
        try:  # from the first moment the run is open: a stop while W&B starts still ends it KILLED
            mlflow.set_tag(STEP_TAG, step)
            if PIPELINE_ENV not in os.environ:  # a pipeline tags the runs it launches with its own process
                mlflow.set_tag(PROCESS_TAG, process_token())
            experiment = mlflow.get_experiment(active.info.experiment_id).name
            wandb_run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or configured("main").get("project_name"),
                group=os.environ.get("WANDB_RUN_GROUP") or experiment,
                job_type=job_type or step,
                name=f"{step}-{active.info.run_id[:8]}",
                config={**params, "mlflow_run_id": active.info.run_id, **trial_config()},
                dir=os.environ["WANDB_DIR"],
                mode=mode,
                reinit="create_new",
            )
            run = StepRun(step, active, wandb_run)
            run.log_params(params)
            yield run
        except StepError as err:
            mlflow.set_tag(ERROR_TAG, str(err)[:5000])
            _finish(wandb_run, 1)
            raise
        except Interrupted as stop:
            _finish(wandb_run, stop.exit_code)
            mlflow.set_tag(STOPPED_TAG, str(stop))
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException:
            _finish(wandb_run, 1)
            raise
        wandb_run.finish()
        if mode == "offline":
            print(f"W&B offline run saved: wandb sync {wandb_run.dir.removesuffix('/files')}")


def _finish(wandb_run: Any, exit_code: int) -> None:
    """Close a W&B run that may not have started yet."""
    if wandb_run is not None:
        wandb_run.finish(exit_code=exit_code)


def model_lineage(run_id: str) -> dict[str, str]:
    """Where a model came from, read from the run that trained it, as tags for the model and its
    registered versions: that run, its pipeline run, the git commit and the data version (DVC md5,
    source)."""
    tags = mlflow.get_run(run_id).data.tags
    found = {
        "sheldon.train_run": run_id,
        "sheldon.pipeline_run": tags.get(PARENT_RUN_TAG, ""),
        "sheldon.git_commit": tags.get(GIT_COMMIT_TAG, ""),
        DATA_MD5_TAG: tags.get(DATA_MD5_TAG, ""),
        DATA_SOURCE_TAG: tags.get(DATA_SOURCE_TAG, ""),
    }
    return {name: value for name, value in found.items() if value}
