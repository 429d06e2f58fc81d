"""What a sweep costs: its trials' own work, and what running them two at a time saves.

    .venv/bin/python benchmarks/sweep.py                 # 6 trials of the configured pipeline
    .venv/bin/python benchmarks/sweep.py --epochs 2 --repeat 1

In a fresh copy of the repo with its own sqlite store: one pipeline fills the step cache; one
with a new train_model.lr runs train_model and evaluate (the pair a trial of an lr sweep runs);
an unchanged re-run is the cached pipeline's overhead. Then a sequential sweep of `--trials` new
lr values, and the same trials again (train_model forced to run) with Hydra's joblib launcher and
2 workers; `--repeat` times, the sequential sweep forced too after the first, so that every sweep
does the same work. Prints
sequential sweep / (trials x the pair's seconds + the cached run's seconds) (goal <= 1: nothing
upstream is recomputed) and parallel / sequential, each repeat's and their median (goal <= 0.65).
This machine's speed drifts by ~20% from one minute to the next: the median of a few repeats,
each pair run back to back, is what to compare."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import bench_env, fresh_copy, say, statuses, timed

CREATE_STORE = "import mlflow; mlflow.search_experiments()"


def step_seconds(output: str, *steps: str) -> float:
    """The seconds the pipeline's summary gives these steps."""
    found = dict(re.findall(r"^(\w+)\s+ran\s+([0-9.]+)", output, re.MULTILINE))
    return sum(float(found[step]) for step in steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=6, help="trials of each sweep")
    parser.add_argument("--epochs", type=int, help="train_model.epochs (default: config.yaml's)")
    parser.add_argument("--repeat", type=int, default=3, help="sequential and parallel sweeps, each")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sheldon-sweep-bench-"))
    try:
        say(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; working in {tmp}")
        root = fresh_copy(tmp)
        env = bench_env(tmp, library=root / "src")
        timed([sys.executable, "-c", CREATE_STORE], tmp, env)
        epochs = [f"train_model.epochs={args.epochs}"] if args.epochs else []
        base = [sys.executable, "main.py", *epochs, "evaluate.min_accuracy=0"]
        seconds, out = timed(base, root, env)
        say(f"first pipeline (fills the cache)   {seconds:6.1f} s  {statuses(out)}")
        seconds, out = timed([*base, "train_model.lr=0.0009"], root, env)
        pair = step_seconds(out, "train_model", "evaluate")
        say(f"a new lr: train_model + evaluate   {pair:6.1f} s  (pipeline {seconds:.1f} s)")
        cached, out = timed(base, root, env)
        say(f"unchanged re-run (all cached)      {cached:6.1f} s  {statuses(out)}")
        # New values all (none is the default lr the first pipeline ran): every trial of both sweeps
        # trains, so the two sweeps do the same work.
        values = ",".join(f"{0.001 * n + 0.0005:.4f}" for n in range(args.trials))
        sweep = [*base[:2], "-m", *base[2:], f"train_model.lr={values}"]
        # Later repeats run the same trials again, train_model forced (and evaluate after it).
        forced, joblib = ["main.force=train_model"], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        sequential, parallel = [], []
        for repeat in range(args.repeat):
            sequential.append(timed([*sweep, *(forced if repeat else [])], root, env)[0])
            say(f"sequential sweep, {args.trials} trials        {sequential[-1]:6.1f} s")
            parallel.append(timed([*sweep, *forced, *joblib], root, env)[0])
            say(f"joblib sweep, 2 workers            {parallel[-1]:6.1f} s")
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bound = args.trials * pair + cached
    print()
    print(
        f"sequential sweep / ({args.trials} x train_model+evaluate + cached run): {sequential[0]:.1f} / "
        f"({args.trials} x {pair:.1f} + {cached:.1f}) = {sequential[0] / bound:.2f} (goal <= 1)"
    )
    ratios = [p / s for p, s in zip(parallel, sequential, strict=True)]
    for p, s, ratio in zip(parallel, sequential, ratios, strict=True):
        print(f"joblib, 2 workers / sequential: {p:.1f} / {s:.1f} = {ratio:.2f}")
    print(f"median: {statistics.median(ratios):.2f} (goal <= 0.65)")
    print(f"load average at the end: {load}")


if __name__ == "__main__":
    main()
