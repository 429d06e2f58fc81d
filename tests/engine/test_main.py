"""main.py's declarations and the engine's own logic, called directly: step selection, overrides,
parameters, summary."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers.checkout import REPO
from omegaconf import OmegaConf

from sheldon.core.errors import StepError
from sheldon.engine.lineage import StepResult, format_summary, pipeline_metrics
from sheldon.engine.overrides import check_overrides, hydra_arguments, short_overrides, sweep_grid
from sheldon.engine.plan import Trial, resolve_env_manager

sys.path.insert(0, str(REPO))  # main.py is imported as a module, as a step list's reader should
import main  # noqa: E402

STEPS = main.STEPS


def test_steps_are_declared_in_pipeline_order():
    assert main._steps == ["download_dataset", "preprocess", "train_model", "evaluate"]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", ["download_dataset", "preprocess", "train_model", "evaluate"]),
        ("evaluate,preprocess", ["preprocess", "evaluate"]),  # pipeline order, not typed order
        ("download", ["download_dataset"]),  # SEED.md's spelling: a unique prefix
        ("download_data, train_model", ["download_dataset", "train_model"]),
    ],
)
def test_select_steps(spec, expected):
    assert STEPS.select(spec) == expected


def test_unknown_step_names_the_valid_ones():
    with pytest.raises(StepError, match="unknown step 'trian'; valid steps: download_dataset, preprocess"):
        STEPS.select("preprocess,trian")


def test_a_trials_run_is_named_for_what_it_sets_that_the_sweep_does_not_set_for_all():
    sweep = "main.steps=all train_model.lr=0.001,0.003 train_model.epochs=1"
    trial = Trial(
        sweep_run_id="run id",
        sweep_name="sweep",
        overrides="main.steps=all train_model.lr=0.003 train_model.epochs=1",
        number=1,
    )
    assert trial.run_name(sweep) == "pipeline lr=0.003"
    assert sweep_grid(sweep.split()) == ["train_model.lr=0.001,0.003"]
    assert sweep_grid(["hparams_search=optuna"]) == ["hparams_search=optuna"]  # its space is in its file
    # a key keeps its section where its last part would not tell it apart
    assert short_overrides(["train_model.seed=1", "preprocess.seed=2", "train_model.lr=0.1"]) == (
        "train_model.seed=1 preprocess.seed=2 lr=0.1"
    )


def test_hydra_arguments_split_options_and_quote_step_lists():
    argv = ["main.steps=preprocess,train_model", "train_model.lr=0.01 main.experiment_name='my exp'", ""]
    assert hydra_arguments(argv) == [
        "main.steps='preprocess,train_model'",
        "train_model.lr=0.01",
        "main.experiment_name='my exp'",
    ]


def test_step_config_passes_scalars_and_target_specs(config):
    params, inputs = STEPS.settings(config, "train_model")
    assert inputs == {"splits": "preprocess/splits"}
    assert params["lr"] == str(config.train_model.lr)
    model = json.loads(params["model"])
    assert model["_target_"] == "sheldon.training.models.SmallCNN"
    assert model["num_classes"] == config.preprocess.num_classes  # interpolations resolved


def test_download_step_reads_the_data_section(config):
    params, inputs = STEPS.settings(config, "download_dataset")
    assert params["source"] == config.data.source and inputs == {}


def test_every_step_has_a_project_and_a_config_section(config):
    for step in main._steps:
        assert (REPO / "src" / step / "MLproject").is_file()
        assert STEPS.section(step) in config


def test_overrides_are_checked_before_anything_runs():
    check_overrides(["train_model.lr=0.01", "main.steps='evaluate'"])
    with pytest.raises(StepError, match="malformed override 'train_model.lr=='"):
        check_overrides(["train_model.lr=="])
    with pytest.raises(StepError, match="train_model.typo"):
        check_overrides(["train_model.typo=3"])


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        (["train_model.lr=0.1,0.2"], "gives several values, a sweep: add -m"),
        (["-m", "train_model.lr=range(1,"], "malformed override"),
        (["-m", "train_model.typo=1,2"], "train_model.typo"),
        (["-m", "train_model.lr=interval(0.1,0.01)"], "an interval's start must be below its end"),
        (
            ["-m", "hparams_search=optuna", "+hydra.sweeper.params.train_model.typo=interval(1,2)"],
            "train_model.typo is not a key",
        ),
        (["-m", "hydra/launcher=nosuch"], "hydra/launcher/nosuch"),
        (["-m", "hparams_search=nosuch"], "hparams_search"),
        (["-m", "main.plan=true", "train_model.lr=0.001,0.003"], "main.plan=true cannot plan a sweep (-m)"),
    ],
)
def test_a_bad_sweep_is_one_line_before_anything_runs(overrides, complaint):
    multirun = overrides[0] == "-m"
    with pytest.raises(StepError, match=re.escape(complaint)):
        check_overrides([o for o in overrides if o != "-m"], multirun)


def test_a_good_sweep_passes_the_check():
    check_overrides(["train_model.lr=0.001,0.003", "train_model.batch_size=range(32,129,32)"], multirun=True)
    check_overrides(["hparams_search=optuna", "train_model.lr=interval(0.001,0.01)"], multirun=True)
    check_overrides(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], multirun=True)


def test_env_manager_follows_the_root_run(monkeypatch, tmp_path):
    assert resolve_env_manager("conda") == "conda"
    with pytest.raises(StepError, match="main.env_manager='pip'"):
        resolve_env_manager("pip")
    conda_env = tmp_path / "mlflow-0123abcd"
    (conda_env / "conda-meta").mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(conda_env))
    assert resolve_env_manager("auto") == "conda"
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "mlflow-venv"))
    assert resolve_env_manager("auto") == "virtualenv"
    monkeypatch.setattr(sys, "prefix", str(REPO / ".venv"))
    assert resolve_env_manager("auto") == "local"


def test_summary_table_aligns_columns():
    results = [
        StepResult(
            step="preprocess", status="ran", seconds=11.23, run_id="a" * 32, headline={"n_train": 3500.0}
        ),
        StepResult(step="evaluate", status="failed", seconds=3.0, run_id=None),
    ]
    lines = format_summary(results).splitlines()
    assert lines[0].split() == ["step", "status", "seconds", "mlflow", "run", "id", "headline"]
    assert lines[2].split() == ["preprocess", "ran", "11.2", "a" * 32, "n_train=3500"]
    assert lines[3].split() == ["evaluate", "failed", "3.0", "-"]


def test_the_pipeline_run_carries_each_steps_headline_metric_under_the_steps_name():
    results = [
        StepResult(
            step="train_model",
            status="cached",
            seconds=0.0,
            run_id="a" * 32,
            headline={"best_val_accuracy": 0.97},
        ),
        StepResult(
            step="evaluate", status="ran", seconds=1.0, run_id="b" * 32, headline={"test_accuracy": 0.96}
        ),
        StepResult(step="other", status="failed", seconds=1.0, run_id=None),
    ]
    expected = {"train_model.best_val_accuracy": 0.97, "evaluate.test_accuracy": 0.96}
    assert pipeline_metrics(results) == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"evaluate.min_accuracy": -0.1},
            "evaluate.min_accuracy: expected a number from 0 to 1, got '-0.1'",
        ),
        ({"train_model.lr": -1}, "train_model.lr must be positive, got -1.0"),
        ({"train_model.lr": "abc"}, "train_model.lr: could not convert string to float: 'abc'"),
        (
            {"preprocess.val_size": 0.6, "preprocess.test_size": 0.5},
            "preprocess.val_size and preprocess.test_size must be fractions in (0, 1) summing below 1, "
            "got 0.6 and 0.5",
        ),
        ({"evaluate.batch_size": 0}, "evaluate.batch_size must be positive, got 0"),
    ],
    ids=["fraction", "positive", "not-a-number", "sizes-sum", "batch-size"],
)
def test_a_setting_a_late_step_refuses_is_refused_before_anything_runs(config, overrides, message):
    """As each step's settings declare their values and rules (src/<step>/settings.py), read in
    the pipeline's process without the steps' own imports."""
    bad = config.copy()
    for key, value in overrides.items():
        OmegaConf.update(bad, key, value)
    with pytest.raises(StepError, match="^" + re.escape(message) + "$"):
        STEPS.check_settings(bad, list(main._steps))


def test_a_step_that_does_not_run_is_not_checked(config):
    bad = config.copy()
    bad.evaluate.min_accuracy = -0.1
    assert list(STEPS.check_settings(bad, ["download_dataset", "preprocess"])) == [
        "download_dataset",
        "preprocess",
    ]


def test_the_early_check_imports_no_step_stack():
    """The pipeline's process reads every step's settings without torch, scikit-learn or matplotlib
    (what an all-cached run would pay for nothing)."""
    script = (
        "import sys; sys.path.insert(0, '.'); import main; from hydra import compose, initialize_config_dir\n"
        f"with initialize_config_dir(config_dir={str(REPO)!r}, version_base=None):\n"
        "    config = compose(config_name='config')\n"
        "main.STEPS.check_settings(config, list(main.STEPS.order))\n"
        "print(sorted({'torch', 'sklearn', 'matplotlib', 'mlflow'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


@pytest.mark.parametrize("spec", ["download_dataset,,train_model", "preprocess,", ",evaluate"])
def test_an_empty_item_in_steps_is_refused(spec):
    with pytest.raises(StepError, match="has an empty item"):
        STEPS.select(spec)
