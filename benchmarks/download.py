"""Download throughput of the download step against curl, and the step's peak memory.

Serves a real NPZ dataset of at least 500 MB on 127.0.0.1, then in turn fetches it with `curl -o`
and with the download step's own code path (stage: stream to a staging folder, check it is a
dataset, swap it into a raw-data folder), each in a fresh process. The step hashes the file on
an idle-priority thread once it is in: without data.sha256 the data lands as soon as the bytes
are in and the hash runs beside DVC's commit and push; with data.sha256 it waits for the check.

    .venv/bin/python benchmarks/download.py            # 512 MiB, 5 rounds
    .venv/bin/python benchmarks/download.py --mib 2048 --rounds 2

Prints each one's best throughput, the ratio step/curl (goal >= 0.8), when the sha256 was known,
and the step process's peak RSS (goal < 200 MB whatever the size), beside the RSS of the same
process without a download.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# The child that runs the step's code. With a URL it downloads; without, it only imports (baseline).
STEP_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers.project import load_step
from sheldon.data.versioning import replace_folder, staging_folder
step = load_step("download_dataset")
if len(sys.argv) > 1:
    raw, expected = Path(sys.argv[2]), sys.argv[3] or None
    started = time.perf_counter()
    with staging_folder(raw) as staging:
        data, digest = step.stage(sys.argv[1], staging, sha256=expected)
        with replace_folder(raw, data):
            pass
    landed = time.perf_counter() - started
    digest.hexdigest()
    print(landed, time.perf_counter() - started)
"""


def make_dataset(path: Path, mib: int) -> None:
    """An NPZ (images uint8 N x 28 x 28, labels) of about `mib` MiB, written in chunks."""
    n = mib * 1024 * 1024 // (28 * 28)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array_header_2_0(
                handle, {"descr": "|u1", "fortran_order": False, "shape": (n, 28, 28)}
            )
            for start in range(0, n, 50_000):
                handle.write(rng.integers(0, 256, (min(50_000, n - start), 28, 28), dtype=np.uint8).tobytes())
        with archive.open("labels.npy", "w") as handle:
            np.lib.format.write_array(handle, (np.arange(n) % 10).astype(np.int64))


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def run_measured(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        sys.exit(f"{args[0]} failed (status {status})")
    return seconds, usage.ru_maxrss * 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=512, help="dataset size in MiB (at least 500)")
    parser.add_argument("--rounds", type=int, default=5, help="fetches per tool; the best counts")
    args = parser.parse_args()
    if not shutil.which("curl"):
        sys.exit("curl is needed as the baseline")
    with tempfile.TemporaryDirectory(prefix="sheldon-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "served").mkdir()
        source = tmp / "served" / "big.npz"
        make_dataset(source, args.mib)
        size = source.stat().st_size
        httpd, url = serve(tmp / "served")
        url = f"{url}/big.npz"
        child = [sys.executable, "-c", STEP_CHILD.format(tests=str(REPO / "tests"))]
        with open(source, "rb") as handle:  # not sheldon's helper: importing mlflow here would
            expected = hashlib.file_digest(handle, "sha256").hexdigest()  # inflate forked RSS
        curl_s, landed_s, hashed_s, verified_s, step_rss = [], [], [], [], []
        try:
            for _ in range(args.rounds):
                quiet_disk(tmp)
                seconds, _, _ = run_measured(["curl", "-sS", "-f", "-o", str(tmp / "curl.npz"), url])
                curl_s.append(seconds)
                for check, landed in (("", landed_s), (expected, verified_s)):
                    quiet_disk(tmp)
                    _, rss, out = run_measured([*child, url, str(tmp / "raw"), check])
                    landed_at, hashed_at = map(float, out.split()[-2:])
                    landed.append(landed_at)
                    if not check:
                        hashed_s.append(hashed_at)
                    step_rss.append(rss)
                    assert (tmp / "raw" / "big.npz").stat().st_size == size
            _, baseline_rss, _ = run_measured(child)
        finally:
            httpd.shutdown()
    mb = size / 1e6
    sample = os.urandom(64 * 1024 * 1024)
    started = time.perf_counter()
    hashlib.sha256(sample).digest()
    sha_speed = len(sample) / 1e6 / (time.perf_counter() - started)
    curl = min(curl_s)
    print(f"file: {mb:,.0f} MB served on 127.0.0.1, best of {args.rounds}")
    print(f"curl                     {mb / curl:7.1f} MB/s  ({curl:.2f} s, process start included)")
    landed, verified = min(landed_s), min(verified_s)
    print(
        f"download step            {mb / landed:7.1f} MB/s  ({landed:.2f} s to data/raw)   "
        f"ratio to curl {curl / landed:.2f} (goal >= 0.8)"
    )
    print(
        f"  its sha256 known after {min(hashed_s):7.2f} s  (hashed in the background once the bytes are in; "
        "the step reads it after DVC's commit and push)"
    )
    print(
        f"with data.sha256 set     {mb / verified:7.1f} MB/s  ({verified:.2f} s, checked before it lands)   "
        f"ratio to curl {curl / verified:.2f} (bounded by sha256: {sha_speed:.0f} MB/s on one core here)"
    )
    print(
        f"peak memory              {max(step_rss) / 1e6:7.1f} MB    (goal < 200 MB; the same process "
        f"without a download: {baseline_rss / 1e6:.1f} MB)"
    )


def quiet_disk(tmp: Path) -> None:
    """Remove the last fetch's output and flush dirty pages, so no fetch pays for the writeback
    of the one before it (or of the generated dataset)."""
    (tmp / "curl.npz").unlink(missing_ok=True)
    shutil.rmtree(tmp / "raw", ignore_errors=True)
    os.sync()


if __name__ == "__main__":
    main()
