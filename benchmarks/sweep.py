"""What a sweep costs: its trials' own work, and what running them two at a time saves.

    .venv/bin/python benchmarks/sweep.py                 # 6 trials of 2 epochs each way
    .venv/bin/python benchmarks/sweep.py --epochs 1 --trials 2

In a fresh copy of the repo with its own sqlite store: one pipeline fills the step cache; one
with a new train_model.lr runs train_model and evaluate (the pair a trial of an lr sweep runs);
an unchanged re-run is the cached pipeline's overhead. Then a sequential sweep of `--trials` new
lr values, and the same trials again (train_model forced to run) with Hydra's joblib launcher and
2 workers. Prints
sequential sweep / (trials x the pair's seconds + the cached run's seconds) (goal <= 1: nothing
upstream is recomputed) and parallel / sequential (goal <= 0.65)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
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
    parser.add_argument("--epochs", type=int, default=2, help="train_model.epochs of every pipeline")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sheldon-sweep-bench-"))
    try:
        say(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; working in {tmp}")
        root = fresh_copy(tmp)
        env = bench_env(tmp, library=root / "src")
        timed([sys.executable, "-c", CREATE_STORE], tmp, env)
        base = [sys.executable, "main.py", f"train_model.epochs={args.epochs}", "evaluate.min_accuracy=0"]
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
        sequential, out = timed(sweep, root, env)
        say(f"sequential sweep, {args.trials} trials        {sequential:6.1f} s")
        # The same trials again (train_model forced, and evaluate after it), two at a time.
        joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "main.force=train_model"]
        parallel, out = timed([*sweep, *joblib], root, env)
        say(f"joblib sweep, 2 workers            {parallel:6.1f} s")
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bound = args.trials * pair + cached
    print()
    ratio = sequential / bound
    print(
        f"sequential sweep / ({args.trials} x train_model+evaluate + cached run): "
        f"{sequential:.1f} / ({args.trials} x {pair:.1f} + {cached:.1f}) = {ratio:.2f} (goal <= 1)"
    )
    ratio = parallel / sequential
    print(f"joblib, 2 workers / sequential: {parallel:.1f} / {sequential:.1f} = {ratio:.2f} (goal <= 0.65)")
    print(f"load average at the end: {load}")


if __name__ == "__main__":
    main()
