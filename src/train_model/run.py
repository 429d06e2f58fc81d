"""train_model: build the model, optimizer and LR schedule named in config (Hydra `_target_`),
train on the `splits` artifact with early stopping and a checkpoint every epoch, and log the best
epoch's model as an MLflow 3 logged model that takes raw images and returns classes and
probabilities (classifier.py), named `classifier` (its `runs:/<run id>/classifier` URI), and in W&B
as a `model` artifact of that name.
nproc_per_node > 1 re-launches this script under torchrun (DistributedDataParallel: gloo on CPU,
nccl on GPU); only rank 0 logs to MLflow and W&B."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from sheldon.core.errors import StepError
from sheldon.core.processes import peak_memory_mb
from sheldon.core.vocabulary import CHECKPOINTS_TAG, DEVICE_TAG
from sheldon.data.datasets import load_split, raw_images
from sheldon.step.artifacts import fetch_artifact
from sheldon.step.cli import run_cli
from sheldon.step.settings import SettingsParser, as_argv, settings_of
from sheldon.step.tracking import StepRun, missing_inputs, model_lineage, step_run
from sheldon.training import (
    CHECKPOINT,
    World,
    launch,
    process_group,
    train,
)
from sheldon.training.models import ServedClassifier
from sheldon.training.plan import plan_training

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

STEP = "train_model"
MODEL = "classifier"  # what the logged model is: its name, and its W&B artifact's


# Its parameters, declared in settings.py: the pipeline checks them without this script's imports.
Settings = settings_of(Path(__file__).parent)


def log_model(model: nn.Module, example: np.ndarray, tags: dict[str, str] | None = None) -> ModelInfo:
    """Log the model as it is served (classifier.py beside this file): raw uint8 images in, the
    class and the class probabilities out. The network is exported by torch.export with
    preprocess's scaling before it and softmax after, so neither sheldon nor anything else outside
    the model is needed to use it. Requirements are pinned rather than inferred (slow)."""
    import mlflow
    import pandas
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    images = raw_images(example)
    outputs = [
        ColSpec("long", "class"),
        ColSpec("float", "probability"),
        ColSpec(Array("float"), "probabilities"),
    ]
    signature = ModelSignature(
        Schema([TensorSpec(np.dtype(np.uint8), (-1, *images.shape[1:]))]), Schema(outputs)
    )
    served = ServedClassifier(model.cpu().eval())
    batch = torch.export.Dim("batch")
    program = torch.export.export(served, (torch.from_numpy(images),), dynamic_shapes={"images": {0: batch}})
    with tempfile.TemporaryDirectory(prefix="sheldon-model-") as folder:
        network = Path(folder) / "network.pt2"
        torch.export.save(program, network)
        return mlflow.pyfunc.log_model(
            name=MODEL,
            python_model=Path(__file__).with_name("classifier.py"),
            artifacts={"network": str(network)},
            signature=signature,
            input_example=images,
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
                f"pandas=={pandas.__version__}",
            ],
            tags=tags,
        )


def fit_and_log(args: Settings, world: World, run: StepRun | None) -> None:
    """Train in this process (one of several under torchrun); `run` is given on rank 0 only."""
    import mlflow

    plan = plan_training(args, world)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with process_group(world, plan.placement.device):
        folder = run.fetch_input("splits", args.splits) if run else fetch_artifact(args.splits)
        train_xy, val_xy = load_split(folder, "train"), load_split(folder, "val")
        if run is not None:
            mlflow.set_tags({CHECKPOINTS_TAG: str(plan.checkpoints), DEVICE_TAG: str(plan.placement.device)})
        if plan.resume_from is not None:
            epoch = plan.resume_from["state"]["epoch"]
            print(f"resumed from {plan.checkpoints / CHECKPOINT} after epoch {epoch}", flush=True)
        model, history = train(
            train_xy,
            val_xy,
            args,
            placement=plan.placement,
            world=world,
            checkpoints=plan.checkpoints,
            resume_from=plan.resume_from,
            on_epoch=(lambda epoch, metrics: run.log_metrics(metrics, step=epoch)) if run else None,
        )
    if run is None:
        return
    logged = log_model(model, train_xy[0][:4], model_lineage(run.run_id))
    run.log_logged_model(logged.model_uri, MODEL)
    best = max(h["val_accuracy"] for h in history)
    best_epoch = 1 + [h["val_accuracy"] for h in history].index(best)
    run.log_metrics(
        {"best_epoch": best_epoch, "epochs_trained": len(history), "peak_memory_mb": peak_memory_mb()}
    )
    run.headline("best_val_accuracy", best)
    print(f"best validation accuracy: {best:.4f} (epoch {best_epoch} of {len(history)})")


def main(args: Settings) -> None:
    world = World.from_env()
    if args.nproc_per_node > 1 and not world.distributed:
        try:
            if problem := missing_inputs(STEP, args.values(), args.inputs()):
                raise StepError(problem)
            plan_training(args, world)
        except StepError:
            with step_run(STEP, args):  # recorded as a failed run of this step, like any failure
                raise
        launch(Path(__file__).resolve(), as_argv(vars(args)), args.nproc_per_node)
    elif world.rank == 0:
        with step_run(STEP, args) as run:  # which stops on a missing input
            fit_and_log(args, world, run)
    else:
        fit_and_log(args, world, None)


def warm_up() -> None:
    """Called ahead of the step when a pipeline starts its interpreter early
    (sheldon/engine/launchers/template.py): torch's first optimizer imports its compiler stack, and its
    first export sets up the rest (~1 s each here, the same on every run)."""
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])
    torch.export.export(nn.Linear(1, 1), (torch.zeros(1, 1),))


def parser() -> SettingsParser:
    return Settings.parser(STEP, __doc__)


if __name__ == "__main__":
    run_cli(main, parser())
