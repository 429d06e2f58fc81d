"""The pipeline: runs the selected steps of config.yaml in order, each as an MLflow project.

mlflow run . --env-manager local                           # every step
mlflow run . --env-manager local -P steps=preprocess,train_model
mlflow run . --env-manager local -P hydra_options="train_model.lr=0.01 train_model.epochs=3"
python main.py main.steps=train_model,evaluate             # same, without the outer MLflow run

The engine is the sheldon library (sheldon/engine/pipeline.py and the modules it names); this file
declares the steps and is the door Hydra and `mlflow run` come through.
"""

from __future__ import annotations

import gc
import sys

import hydra
from omegaconf import DictConfig

from sheldon.core.errors import StepError
from sheldon.core.processes import Interrupted, as_interrupted, raise_on_signals
from sheldon.data.versioning import restore_pinned
from sheldon.engine.overrides import MULTIRUN_FLAGS, check_overrides, hydra_arguments
from sheldon.engine.pipeline import run_and_report
from sheldon.engine.steps import StepFacts, Steps
from sheldon.engine.sweep import current_trial, end_open_sweep, objective, stop_sweep

# The steps, in pipeline order. Each is an MLflow project in src/<step>.
_steps = [
    "download_dataset",
    "preprocess",
    "train_model",
    "evaluate",
]

# What the engine must know of a step beyond its MLproject (sheldon/engine/steps.py says what each means).
_facts = {
    # SEED.md named its section `data`; its outputs depend on the version data.dvc pins, and it
    # fills data/raw in the working tree with what it logs as raw_data.
    # A fresh clone whose tracking store has its run pulls data/raw from the DVC remote instead.
    "download_dataset": StepFacts(
        section="data", state_files=("data.dvc",), workspace=("raw_dir", "raw_data"), restore=restore_pinned
    ),
    "train_model": StepFacts(resume="train_model.resume=true"),
}

# Steps run only when named (main.steps=test_model), never by `all`, as the Udacity starter keeps
# test_regression_model out of its _steps; named, they always run (no cache: the champion changes).
_on_request = ["test_model"]

STEPS = Steps(tuple(_steps + _on_request), _facts, frozenset(_on_request))


@hydra.main(config_path=".", config_name="config", version_base=None)
def go(config: DictConfig) -> float | None:
    trial = current_trial()  # one pipeline of a sweep (`-m`), or None
    outcome = run_and_report(config, STEPS, trial)
    if trial is not None:
        return objective(config, trial, outcome)  # what Optuna maximizes; None for a failed trial
    if outcome.code:
        sys.exit(outcome.code)
    return None


if __name__ == "__main__":
    raise_on_signals()
    sys.argv[1:] = hydra_arguments(sys.argv[1:])
    try:
        multirun = bool(set(MULTIRUN_FLAGS) & set(sys.argv[1:]))
        check_overrides([arg for arg in sys.argv[1:] if not arg.startswith("-")], multirun)
    except StepError as err:
        print(f"error: {err}", file=sys.stderr)
        from sheldon.engine.launchers.runs import discard_launcher_run  # MLflow: on this path only

        discard_launcher_run()
        sys.exit(1)
    except Interrupted as stop:
        sys.exit(stop.exit_code)
    try:
        go()
    except KeyboardInterrupt as signalled:  # a sweep's launching process, its trials in workers (joblib, Ray)
        stop = as_interrupted(signalled)
        stop_sweep(stop)
        sys.exit(stop.exit_code)
    except (Exception, SystemExit):  # a sweep's launcher failed (Ray's, say): Hydra has said why
        end_open_sweep("FAILED", "the sweep ended before its table: see its output", "its sweep failed")
        raise
    finally:
        # Exit without a last garbage collection over MLflow's large heap: ~1 s of an all-cached run.
        gc.freeze()
