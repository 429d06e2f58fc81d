"""sheldon's pipeline against a reference pipeline of the classic shape, on the same work.

    .venv/bin/python benchmarks/reference_pipeline.py                        # 10 epochs, 2 rounds
    .venv/bin/python benchmarks/reference_pipeline.py --epochs 1 --rounds 1  # a quick check

The reference (benchmarks/reference/, copied to a temporary folder) is the classic Udacity-style
pipeline: a root main.py that runs each step's MLproject in turn with `mlflow.run(...,
env_manager="local")`, each step a run.py that opens one W&B run (offline) and logs its output as
an MLflow artifact, no cache. Same work as sheldon's: the packaged MNIST 5k, the stratified split
0.15/0.15 (seed 42), sheldon.training.models.SmallCNN for 10 epochs at batch 64, Adam lr 1e-3 at a
constant lr, no early stopping, one thread, then the test accuracy. It imports sheldon's model
class and dataset loader, nothing of its engine, cache or tracking.

Each round runs the reference, then sheldon cold in a temporary copy of the repo
(`python main.py main.use_cache=false` with the same training settings), then sheldon again
unchanged (every step cached); each pipeline has its own sqlite store, made before the timing, and
W&B is offline. Then a step that does nothing, launched by sheldon's engine, against a bare
process (benchmarks/step_launch.py). Prints each wall time and, from the best of the rounds:
sheldon cold / reference (goal <= 0.6), unchanged re-run / reference (goal < 0.15), and the
do-nothing step / bare process (goal <= 1.5)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, bench_env, fresh_copy, say, statuses, timed
from step_launch import add_noop_step, measure, report

# The training settings that make sheldon's pipeline do the reference's work (config.yaml names).
SAME_WORK = [
    "train_model.lr=0.001",
    "train_model.scheduler=null",
    "train_model.patience=0",
    "train_model.batch_size=64",
    "train_model.threads=1",
    "train_model.seed=42",
    "preprocess.val_size=0.15",
    "preprocess.test_size=0.15",
    "preprocess.seed=42",
    "evaluate.min_accuracy=0",  # no work; off so that a quick check (--epochs 1) gets to the end
]
CREATE_STORE = "import mlflow; mlflow.search_experiments()"


def accuracy(output: str) -> str:
    """The test accuracy a pipeline printed (the reference's last line, sheldon's summary)."""
    found = re.findall(r"test_accuracy=([0-9.]+)", output)
    return found[-1] if found else "?"


def seconds_list(times: list[float]) -> str:
    return ", ".join(f"{s:.1f}" for s in times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three runs; the best counts")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of both pipelines")
    parser.add_argument("--launches", type=int, default=5, help="do-nothing step launches; the best counts")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sheldon-bench-"))
    try:
        say(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; working in {tmp}")
        root = fresh_copy(tmp)
        add_noop_step(root)
        reference = shutil.copytree(REPO / "benchmarks" / "reference", tmp / "reference")
        ref_env = bench_env(tmp, "reference.db", library=root / "src")
        sheldon_env = bench_env(tmp, "sheldon.db", library=root / "src")
        for env in (ref_env, sheldon_env):  # a new sqlite store takes seconds: not part of either
            timed([sys.executable, "-c", CREATE_STORE], tmp, env)
        ref_cmd = [sys.executable, "main.py", f"train.epochs={args.epochs}"]
        same = [sys.executable, "main.py", f"train_model.epochs={args.epochs}", *SAME_WORK]
        cold_cmd = [*same, "main.use_cache=false"]
        ref_s, cold_s, same_s = [], [], []
        for n in range(1, args.rounds + 1):
            head = f"round {n}/{args.rounds}:"
            say(f"{head} reference pipeline ({args.epochs} epochs) ...")
            seconds, out = timed(ref_cmd, reference, ref_env)
            ref_s.append(seconds)
            say(f"{head} reference pipeline          {seconds:6.1f} s  test_accuracy={accuracy(out)}")
            say(f"{head} sheldon cold (main.use_cache=false) ...")
            seconds, out = timed(cold_cmd, root, sheldon_env)
            cold_s.append(seconds)
            say(f"{head} sheldon cold                {seconds:6.1f} s  test_accuracy={accuracy(out)}")
            say(f"{head}   {statuses(out)}")
            seconds, out = timed(same, root, sheldon_env)
            same_s.append(seconds)
            say(f"{head} sheldon unchanged re-run    {seconds:6.1f} s  {statuses(out)}")
            if statuses(out).count(" cached ") != 4:
                say(f"{head}   warning: the unchanged re-run ran steps, not all four were cached")
        bare, launch = measure(root, sheldon_env, args.launches)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    ref = min(ref_s)
    print()
    print(f"best of {args.rounds} round(s), {args.epochs} epochs, wall seconds:")
    print(f"reference pipeline (mlflow.run per step)  {ref:6.1f} s  ({seconds_list(ref_s)})")
    print(
        f"sheldon cold (main.use_cache=false)       {min(cold_s):6.1f} s  ({seconds_list(cold_s)})"
        f"  ratio {min(cold_s) / ref:.2f} (goal <= 0.6)"
    )
    print(
        f"sheldon unchanged re-run (all cached)     {min(same_s):6.1f} s  ({seconds_list(same_s)})"
        f"  ratio {min(same_s) / ref:.3f} (goal < 0.15)"
    )
    print(report(bare, launch))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load average at the end: {load}  (uptime: {uptime})")


if __name__ == "__main__":
    main()
