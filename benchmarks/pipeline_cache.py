"""Wall time of the default pipeline cold, re-run unchanged, and re-run with one training
parameter changed, in a temporary copy of the repo with its own tracking db and W&B folder.

    .venv/bin/python benchmarks/pipeline_cache.py [--hydra-options "train_model.epochs=1"]

Prints each wall time and its ratio to the cold run, and the steps each run launched.
Goals: unchanged <= 0.2 of cold and under 6 s; the changed run spends nothing on
download_dataset or preprocess. The unchanged run is measured --rounds times, each beside
`mlflow run` of a project that does nothing: the floor set by MLflow's CLI on this machine."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import bench_env, fresh_copy, statuses, timed

NOOP_PROJECT = 'name: noop\nentry_points:\n  main:\n    command: "true"\n'


def run(root: Path, env: dict[str, str], hydra_options: str = "") -> tuple[float, str]:
    command = ["mlflow", "run", ".", "--env-manager", "local"]
    if hydra_options:
        command += ["-P", f"hydra_options={hydra_options}"]
    return timed(command, root, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hydra-options", default="", help="overrides for all three runs")
    parser.add_argument("--rounds", type=int, default=3, help="unchanged re-runs; the best counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sheldon-bench-") as tmp:
        root = fresh_copy(Path(tmp))
        env = bench_env(Path(tmp))
        changed = f"{args.hydra_options} train_model.lr=0.002".strip()
        noop = Path(tmp) / "noop"
        noop.mkdir()
        (noop / "MLproject").write_text(NOOP_PROJECT)
        cold, cold_out = run(root, env, args.hydra_options)
        same, floor = [], []
        for _ in range(args.rounds):
            seconds, same_out = run(root, env, args.hydra_options)
            same.append(seconds)
            floor.append(run(noop, env)[0])
        lr, lr_out = run(root, env, changed)
    best, least = min(same), min(floor)
    print(f"cold run           {cold:7.1f} s  ratio 1.00   {statuses(cold_out)}")
    print(f"unchanged re-run   {best:7.1f} s  ratio {best / cold:.2f}   {statuses(same_out)}")
    print(f"train_model.lr     {lr:7.1f} s  ratio {lr / cold:.2f}   {statuses(lr_out)}")
    print(
        f"mlflow run, no-op  {least:7.1f} s  (a project whose command is `true`: MLflow's own start-up, "
        f"the floor here); the pipeline's part of the unchanged re-run: {best - least:.1f} s"
    )


if __name__ == "__main__":
    main()
