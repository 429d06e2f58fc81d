"""The reference pipeline: each step in turn with `mlflow.run`, its inputs the MLflow artifacts of
the step before (runs:/ URIs), all under one pipeline run.

    python main.py [train.epochs=1 ...]
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import mlflow
from omegaconf import DictConfig

HERE = Path(__file__).resolve().parent


def step(name: str, parameters: dict[str, object]) -> str:
    """Run one step's MLproject to the end; its run id."""
    submitted = mlflow.run(str(HERE / name), "main", parameters=parameters, env_manager="local")
    return submitted.run_id


@hydra.main(config_path=".", config_name="config", version_base=None)
def go(config: DictConfig) -> None:
    os.environ["WANDB_PROJECT"] = config.main.project_name
    os.environ["WANDB_RUN_GROUP"] = config.main.experiment_name
    mlflow.set_experiment(config.main.experiment_name)
    with mlflow.start_run(run_name="pipeline"):
        download = step("download", {"dataset": config.data.dataset})
        preprocess = step(
            "preprocess",
            {
                "raw_data": f"runs:/{download}/raw_data",
                "val_size": config.preprocess.val_size,
                "test_size": config.preprocess.test_size,
                "seed": config.preprocess.seed,
            },
        )
        splits = f"runs:/{preprocess}/splits"
        train = step(
            "train",
            {
                "splits": splits,
                "epochs": config.train.epochs,
                "batch_size": config.train.batch_size,
                "lr": config.train.lr,
                "seed": config.train.seed,
            },
        )
        step(
            "evaluate",
            {"model": f"runs:/{train}/model", "splits": splits, "batch_size": config.evaluate.batch_size},
        )


if __name__ == "__main__":
    go()
