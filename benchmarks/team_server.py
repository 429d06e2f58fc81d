"""Wall time of the default pipeline against a team's tracking server (`make server`: mlflow
server, sqlite db, artifacts in an S3 bucket on moto's server, proxied), next to the same pipeline
on the embedded sqlite store; then a second clone's run against the same server.

    .venv/bin/python benchmarks/team_server.py [--hydra-options "train_model.epochs=1"]

Prints each wall time, the server's ratio to the embedded store, and the steps each run launched.
The second clone must be all cached, with data/raw pulled from the team's DVC remote (S3)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import REPO, STEPS, bench_env, fresh_copy, say, statuses, timed

sys.path.insert(0, str(REPO / "tests"))
from helpers.object_store import moto_s3  # noqa: E402

from sheldon.core.processes import stop_step  # noqa: E402
from sheldon.serving.server import free_port, wait_until  # noqa: E402

TABLE = {"step", "----------------", *STEPS}  # the summary table's lines: header, rule, rows


def pipeline(root: Path, env: dict[str, str], hydra_options: str) -> tuple[float, str]:
    command = ["mlflow", "run", ".", "--env-manager", "local"]
    return timed(command + (["-P", f"hydra_options={hydra_options}"] if hydra_options else []), root, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hydra-options", default="", help="overrides for every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sheldon-bench-") as tmp, moto_s3("team", "team-data") as s3:
        tmp = Path(tmp)
        (tmp / "embedded").mkdir()
        embedded, embedded_out = pipeline(
            fresh_copy(tmp / "embedded"), bench_env(tmp / "embedded"), args.hydra_options
        )
        say(f"embedded sqlite store  {embedded:6.1f} s  {statuses(embedded_out)}")

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "sheldon.serving.server", "--port", str(port),
             "--db", f"sqlite:///{tmp / 'server.db'}", "--artifacts", "s3://team/mlflow"],
            env=bench_env(tmp) | s3.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            health = f"{url}/health"
            wait_until(lambda: urllib.request.urlopen(health, timeout=2).close(), server, "the server")
            results = []
            for member in ("alice", "bob"):
                (tmp / member).mkdir()
                root = fresh_copy(tmp / member)
                env = bench_env(tmp / member) | s3.env | {"MLFLOW_TRACKING_URI": url}
                remote = ["dvc", "remote", "add", "-d", "--local", "team", "s3://team-data/dvc"]
                subprocess.run(remote, cwd=root, env=env, check=True, capture_output=True)
                results.append(pipeline(root, env, args.hydra_options))
                say(f"team server, {member:5}   {results[-1][0]:6.1f} s  {statuses(results[-1][1])}")
        finally:
            stop_step(server.pid)
    (first, _), (second, second_out) = results
    print(f"\nteam server / embedded store: {first:.1f} / {embedded:.1f} s = {first / embedded:.2f}")
    print(f"second clone, all cached: {second:.1f} s; its summary:")
    table = [line for line in second_out.splitlines() if line.split()[:1] and line.split()[0] in TABLE]
    print("\n".join(table))


if __name__ == "__main__":
    main()
