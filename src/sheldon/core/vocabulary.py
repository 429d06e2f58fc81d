"""The names sheldon writes into MLflow, each defined once: the tags it sets on runs and
experiments, and the `runs:/<run id>/<artifact>` URI of an artifact a run logged. Light on purpose
(only `re`): main.py's process and every step read it."""

from __future__ import annotations

import re

# On a step's run
STEP_TAG = "sheldon.step"  # the step the run belongs to
HEADLINE_TAG = "sheldon.headline"  # the metric a step's summary line shows
NOTE_TAG = "sheldon.note"  # a step's one-line verdict, shown under the summary when it ran
REGISTERED_TAG = "sheldon.registered_version"  # <registered model>/<version> evaluate made of the model
ERROR_TAG = "sheldon.error"  # the one-line StepError a step failed with (a setting or input to fix)
KEY_TAG = "sheldon.cache_key"
KEY_PARTS_TAG = (
    "sheldon.key_parts"  # what the key hashes, part by part (JSON: sheldon/engine/cache.py's KeyParts)
)
WHY_TAG = (
    "sheldon.why"  # why the step ran rather than reusing a run (sheldon/engine/cache.py's why_not_cached)
)
DIGEST_TAG = "sheldon.digest."  # + artifact name: content digest of a logged output
UNCACHEABLE_TAG = "sheldon.not_cacheable"  # set by a step whose outputs the key cannot capture
INPUT_TAG = "sheldon.input."  # + input name: the URI the step read
INPUT_DIGEST_TAG = "sheldon.input_digest."  # + input name: the digest of the output it read
INPUT_SOURCE_TAG = "sheldon.input_source."  # + input name: its upstream run, and how got (engine/lineage.py)
PIPELINE_RUN_TAG = "sheldon.pipeline_run_id"
CHECKPOINTS_TAG = "sheldon.checkpoints"  # train_model: where its checkpoints are
DEVICE_TAG = "sheldon.device"  # train_model: the device it trained on

# On a registered model version
TEST_SPLIT_TAG = "sheldon.test_split"  # digest of the splits artifact evaluate scored it on
MODEL_CARDS = "model_cards"  # the artifact folder, beside the model in its run, of its versions' cards

# On a step's or a pipeline's run
PROCESS_TAG = "sheldon.process"  # token of the process whose death means the run is dead
STOPPED_TAG = "sheldon.stopped"  # why a run was ended KILLED or FAILED from outside the step
GIT_DIRTY_TAG = "sheldon.git_dirty"  # whether the git tree had uncommitted changes
DATA_MD5_TAG = "sheldon.data_md5"  # the DVC md5 data.dvc pins
DATA_SOURCE_TAG = "sheldon.data_source"  # where that version came from (data.dvc's meta.source)

# On a pipeline's run
LINEAGE_FILE = "lineage.json"  # its manifest artifact: each step's run, inputs and outputs
PINNED_TAG = "sheldon.pinned."  # + step: the run pinned by hand (main.pin)
FAILED_STEP_TAG = "sheldon.failed_step"
RAN_STEPS_TAG = "sheldon.ran_steps"  # the steps that ran rather than being reused, comma-separated
ALL_CACHED_TAG = "sheldon.all_cached"  # "true" on a pipeline (not a trial) that reused every step
TRIAL_TAG = "sheldon.trial"  # a sweep's pipeline: the trial's overrides
TRIAL_NUMBER_TAG = "sheldon.trial_number"  # a sweep's pipeline: Hydra's job number, from 0

# On a sweep's run
SWEEP_TAG = "sheldon.sweep"  # the sweep's name
SWEEP_OVERRIDES_PARAM = "sweep_overrides"  # a param: the sweep's command-line overrides

# In the environment
TRIAL_ENV = "SHELDON_TRIAL"  # a sweep trial's overrides, for its steps' W&B config
SWEEP_ENV = "SHELDON_SWEEP"  # "<run id> <name>" of the sweep the pipelines of this process belong to
SWEEP_PROCESS_ENV = "SHELDON_SWEEP_PROCESS"  # token of the process that launches the trials (processes.py)
SHARED_TEMPLATE_ENV = "SHELDON_SHARED_TEMPLATE"  # {"python", "socket"}: a sweep's step template
SWEEP_TRIALS_ENV = "SHELDON_SWEEP_TRIALS"  # how many trials the sweep runs, when known beforehand
QUIET_ENV = "SHELDON_QUIET"  # "1": a quiet pipeline's process and its steps (sheldon/core/output.py)
OUTPUT_PREFIX_ENV = "SHELDON_OUTPUT_PREFIX"  # what each line printed starts with: "[trial 2] "

# MLflow's own, which sheldon sets
RUN_NAME_TAG = "mlflow.runName"
PARENT_RUN_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
BACKEND_TAG = "mlflow.project.backend"  # what launched a project run
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # on an experiment
DESCRIPTION_TAG = "mlflow.note.content"  # a run's or an experiment's description, Markdown the UI renders
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + key, on an experiment: a runs view the UI opens by URL

_RUNS_URI = re.compile(r"runs:/([0-9a-f]+)/(.+?)/?")


def runs_uri(run_id: str, artifact: str) -> str:
    """The MLflow URI of artifact `artifact` that run `run_id` logged."""
    return f"runs:/{run_id}/{artifact}"


def parse_runs_uri(uri: str) -> tuple[str, str] | None:
    """(run id, artifact path) of a `runs:/<run id>/<artifact>` URI; None for any other URI."""
    match = _RUNS_URI.fullmatch(uri)
    return (match[1], match[2]) if match else None


# The search that finds the pipeline runs (a sweep's trials among them): neither a step's run
# nor a sweep's. Their names say what sets them apart (`pipeline lr=0.001`), so they are not found by name.
PIPELINE_RUNS = f"tags.`{STEP_TAG}` IS NULL AND tags.`{SWEEP_TAG}` IS NULL"
