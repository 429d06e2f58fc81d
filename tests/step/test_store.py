"""sheldon.step.store: an unusable tracking store stops a run within seconds, with one line naming it;
a usable one (a real `mlflow server`, an MLflow sqlite db, a db not created yet) passes."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers.checkout import REPO, copy_repo
from helpers.http_server import Route, free_port, start, stop
from helpers.project import BIN

from sheldon.core.errors import StepError
from sheldon.step.store import PROBE, check_tracking_store

FAST_S = 10  # what a user waits, at most, for the line


def failure(uri: str) -> str:
    """The one line check_tracking_store raises for `uri`, checked to come within FAST_S."""
    began = time.monotonic()
    with pytest.raises(StepError) as raised:
        check_tracking_store(uri)
    assert time.monotonic() - began < FAST_S
    line = str(raised.value)
    assert "\n" not in line
    return line


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a temporary sqlite backend: (its URL, its db)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
         "--default-artifact-root", str(home / "artifacts")],
        cwd=home, env=env | {"MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a new db and uvicorn: ~20 s on a busy machine
        while True:
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not answer /health"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url, home / "mlflow.db"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its group: uvicorn and the job runner too
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture
def http_server():
    state, httpd = start(
        {
            PROBE: Route(b"", fail_first=99),  # 503 on every request
            "/html" + PROBE: Route(b"<html><body>a web page, not MLflow</body></html>"),
        }
    )
    yield state.url
    stop(state, httpd)


def test_a_real_mlflow_server_passes(mlflow_server):
    url, _ = mlflow_server
    check_tracking_store(url)
    check_tracking_store(url + "/")


def test_nothing_listening_is_one_line_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    line = failure(uri)
    assert uri in line and "unreachable (connection refused)" in line and "MLFLOW_TRACKING_URI" in line


def test_a_server_that_never_answers_times_out_with_one_line():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(
            StepError, match=f"tracking server {uri} is unreachable \\(no answer within 1 s\\)"
        ):
            check_tracking_store(uri, timeout=1)


def test_a_password_in_the_uri_is_not_shown():
    line = failure(f"http://me:s3cret@127.0.0.1:{free_port()}")
    assert "s3cret" not in line and "me:***@127.0.0.1" in line


def test_a_server_answering_errors_is_one_line(http_server):
    line = failure(http_server)
    assert http_server in line and "HTTP 503" in line


@pytest.mark.parametrize(("path", "complaint"), [("/nothing", "HTTP 404"), ("/html", "not JSON")])
def test_a_server_that_is_not_mlflow_is_one_line(http_server, path, complaint):
    line = failure(http_server + path)
    assert f"{http_server + path} is not an MLflow tracking server" in line and complaint in line


def test_a_missing_db_passes_mlflow_creates_it(tmp_path):
    check_tracking_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    assert not (tmp_path / "new").exists()


def test_a_store_mlflow_made_passes(mlflow_server):
    _, db = mlflow_server
    check_tracking_store(f"sqlite:///{db}")


def test_random_bytes_as_the_db_is_one_line_naming_the_file(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(os.urandom(8192))
    line = failure(f"sqlite:///{db}")
    assert f"tracking db {db} is unreadable (file is not a database)" in line


def test_a_sqlite_db_of_something_else_is_one_line_naming_the_file(tmp_path):
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    connection.close()
    line = failure(f"sqlite:///{db}")
    assert f"tracking db {db} is a sqlite db but not an MLflow store" in line
    assert db.read_bytes()[:16] == b"SQLite format 3\x00"  # read only: left as it was


def test_nothing_listening_for_a_database_server_is_one_line():
    uri = f"postgresql://me:s3cret@127.0.0.1:{free_port()}/mlflow"
    line = failure(uri)
    assert "127.0.0.1" in line and "connection refused" in line and "s3cret" not in line


def test_make_run_stops_before_mlflow_with_one_line(tmp_path):
    """The Makefile's `run` target, as a user types it, against a server that is not there: one
    line on stderr, and `mlflow run` never starts (`make` adds its own `Error 1` line)."""
    root = copy_repo(tmp_path / "repo", REPO)
    uri = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    began = time.monotonic()
    # -o: take the venv as set up (the copy has none; this test's interpreter is the venv's).
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", "setup", "run"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - began < FAST_S
    assert result.returncode != 0
    # make's own last word: `make: ***`, or `make[1]: ***` when the tests run under `make test`
    lines = [line for line in result.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert lines == [f"error: tracking server {uri} is unreachable (connection refused): "
                     "start it, or check MLFLOW_TRACKING_URI"]  # fmt: skip
    assert "mlflow run" not in result.stdout + result.stderr


@pytest.mark.parametrize("store", ["corrupt", "absent"])
def test_python_m_sheldon_store_reads_the_environment(tmp_path, store):
    """`python -m sheldon.step.store` checks MLFLOW_TRACKING_URI, a relative path made absolute."""
    if store == "corrupt":
        (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = "sqlite:///mlflow.db"
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sheldon.step.store"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert time.monotonic() - began < FAST_S
    if store == "absent":
        assert (result.returncode, result.stderr) == (0, "")
        assert not (tmp_path / "mlflow.db").exists()
        return
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: tracking db {tmp_path / 'mlflow.db'} is unreadable (file is not a database): "
        "move it aside (a new one is created), or check MLFLOW_TRACKING_URI"
    ]
