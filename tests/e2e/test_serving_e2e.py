"""The model after the pipeline, for real: loaded where sheldon cannot be imported, served by the
real MLflow scoring server `make serve` runs on 127.0.0.1, batch prediction of a folder of PNGs, and
test_model, all against the champion the session's pipeline run promoted."""

from __future__ import annotations

import csv
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers.http_server import free_port
from helpers.project import said

from sheldon.data.datasets import load_split, raw_images

MODEL = "sheldon-classifier"

BLOCKED = """import json, sys
import numpy as np


class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "sheldon" or name.startswith("sheldon."):
            raise ImportError(f"{name} is blocked")


sys.meta_path.insert(0, Blocked())
import mlflow

model = mlflow.pyfunc.load_model(sys.argv[1])
images = np.load(sys.argv[2])
print(json.dumps({"classes": model.predict(images)["class"].tolist(), "sheldon": "sheldon" in sys.modules}))
"""


@pytest.fixture(scope="module")
def champion(project, full_run, tmp_path_factory) -> dict:
    """The champion version, its evaluate run's predictions, and the raw test images they are of."""
    client = project.client()
    version = client.get_model_version_by_alias(MODEL, "champion")
    evaluate_run = version.tags["sheldon.evaluate_run"]
    table = json.loads(Path(client.download_artifacts(evaluate_run, "predictions.json")).read_text())
    splits = client.get_run(evaluate_run).data.params["splits"]
    run_id, artifact = splits.removeprefix("runs:/").split("/", 1)
    x, y = load_split(Path(client.download_artifacts(run_id, artifact)), "test")
    images = raw_images(x)
    path = tmp_path_factory.mktemp("champion") / "test_images.npy"
    np.save(path, images)
    return {"version": version, "predicted": [row[2] for row in table["data"]], "images": images, "npy": path}


def test_the_model_loads_and_predicts_where_sheldon_cannot_be_imported(project, champion):
    result = project.run(sys.executable, "-c", BLOCKED, f"models:/{MODEL}@champion", str(champion["npy"]))
    assert result.returncode == 0, result.output[-3000:]
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer == {"classes": champion["predicted"], "sheldon": False}  # what evaluate computed


def post(port: int, body: object) -> tuple[int, dict]:
    status, answer = post_bytes(port, json.dumps(body).encode())
    return status, json.loads(answer)


def post_bytes(port: int, data: bytes | Iterable[bytes]) -> tuple[int, bytes]:
    """POST `data` to /invocations (chunked when it is an iterable); the status and the body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@contextmanager
def serving(project, *args: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """`python -m sheldon.serving.serve model` on a free port, once it answers /ping; its port and process."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sheldon.serving.serve", "model", "--port", str(port), *args],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.5)
        yield port, server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_served_champion_answers_as_evaluate_did_and_refuses_bad_requests_with_400(project, champion):
    with serving(project) as (port, _):
        images = champion["images"][:20]
        status, answer = post(port, {"inputs": images.tolist()})
        assert status == 200
        assert [row["class"] for row in answer["predictions"]] == champion["predicted"][:20]
        assert all(abs(sum(row["probabilities"]) - 1) < 1e-4 for row in answer["predictions"])

        for bad, reason in [
            ({"inputs": [[[1, 2], [3, 4]]]}, "Shape of input (1, 2, 2) does not match"),  # wrong size
            ({"inputs": []}, "Failed to enforce schema"),  # an empty batch
            ({"inputs": [[[300] * 28] * 28]}, "out of bounds for uint8"),  # not a uint8 pixel
            ({"inputs": [[["white"] * 28] * 28]}, "invalid literal"),  # not a number
        ]:
            status, answer = post(port, bad)
            assert status == 400 and reason in answer["message"], answer
        status, answer = post(port, {"inputs": images[:1].tolist()})  # still serving
        assert status == 200 and answer["predictions"][0]["class"] == champion["predicted"][0]


def test_the_served_champion_listens_on_127_0_0_1_refuses_a_body_over_its_limit_and_quotes_little(
    project, champion
):
    with serving(project, "--max-request-mb", "4") as (port, server):
        listening = {c.laddr.ip for c in psutil.Process(server.pid).net_connections() if c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}  # nothing on the machine's other addresses

        too_big = b'{"inputs": [' + b"1, " * 1_700_000 + b"1]}"  # 5.1 MB
        for data in (too_big, [too_big[:3_000_000], too_big[3_000_000:]]):  # a Content-Length, chunked
            status, answer = post_bytes(port, data)
            assert status == 413 and len(answer.splitlines()) == 1, answer[:300]
            assert "the request body" in json.loads(answer)["message"]
            assert "is over this server's limit of 4 MB" in json.loads(answer)["message"]
        # A client that waits for 100 Continue is answered at once, having sent nothing.
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        client.putrequest("POST", "/invocations")
        for header, value in [
            ("Content-Type", "application/json"),
            ("Content-Length", "10000000000"),
            ("Expect", "100-continue"),
        ]:
            client.putheader(header, value)
        client.endheaders()
        response = client.getresponse()
        assert response.status == 413 and b"(10,000,000,000 bytes)" in response.read()
        client.close()

        status, answer = post_bytes(port, too_big[:3_900_000] + b"x]}")  # under the limit, no JSON
        assert status == 400 and len(answer) < 2000, (status, len(answer))  # it was the 3.9 MB, quoted
        message = json.loads(answer)["message"]
        assert (
            "Ensure that input is a valid JSON formatted string" in message and "characters more)" in message
        )

        status, answer = post(port, {"inputs": champion["images"][:2].tolist()})  # still serving
        assert status == 200 and [row["class"] for row in answer["predictions"]] == champion["predicted"][:2]


def test_batch_prediction_of_a_folder_writes_a_csv_and_lists_what_it_skipped(project, champion, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(champion["images"][:30]):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    Image.fromarray(champion["images"][30]).resize((56, 56)).save(folder / "big.png")  # resized back
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "predictions.csv"
    result = project.run(
        sys.executable, "-m", "sheldon.serving.predict", str(folder), "--output", str(output)
    )
    assert result.returncode == 0, result.output[-3000:]
    with open(output, newline="") as handle:
        rows = {row["input"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 31 and "notes.txt" not in rows
    assert [int(rows[f"{i:03d}.png"]["class"]) for i in range(30)] == champion["predicted"][:30]
    assert all(0 < float(row["probability"]) <= 1 for row in rows.values())
    assert "skipped 1 file(s) that are no image: notes.txt" in result.stdout
    assert "resized to 28x28: 1 image(s)" in result.stdout


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda tmp: np.savez(tmp / "scaled.npz", x=np.full((2, 28, 28), 0.5)),
            "pixels must be whole numbers",
        ),
        (lambda tmp: np.savez(tmp / "small.npz", x=np.zeros((2, 8, 8), np.uint8)), "the model takes 28x28"),
        (lambda tmp: None, "does not exist"),
    ],
)
def test_batch_prediction_refuses_bad_input_with_one_line_and_writes_nothing(
    project, champion, tmp_path, make, message
):
    make(tmp_path)
    name = {"scaled.npz", "small.npz"} & {p.name for p in tmp_path.iterdir()}
    given = tmp_path / (name.pop() if name else "missing.npz")
    output = tmp_path / "predictions.csv"
    result = project.run(sys.executable, "-m", "sheldon.serving.predict", str(given), "--output", str(output))
    assert result.returncode == 1 and message in result.stderr
    assert len(said(result.stderr)) == 1, result.stderr
    assert not output.exists()


def test_test_model_scores_the_champion_as_evaluate_scored_it(project, champion):
    result = project.run(sys.executable, "main.py", "main.steps=test_model")
    assert result.returncode == 0, result.output[-3000:]
    version = champion["version"].version
    accuracy = project.client().get_run(champion["version"].tags["sheldon.evaluate_run"]).data.metrics
    expected = f"test_model: {MODEL} v{version} (champion): {accuracy['test_accuracy']:.4f} on the test split"
    assert expected in result.stdout


@pytest.mark.slow  # ~30 s: the default suite keeps under 15 min
def test_test_model_refuses_a_model_without_champion_or_that_does_not_exist(project, full_run):
    # A version evaluate registers below min_accuracy is never champion.
    unpromoted = [
        "train_model.epochs=1",
        "evaluate.registered_model_name=unpromoted",
        "evaluate.min_accuracy=1",
    ]
    result = project.run(sys.executable, "main.py", "main.steps=evaluate", *unpromoted)
    assert "evaluate: unpromoted v1: not champion: " in result.stdout, result.output[-3000:]
    for name, message in [
        ("unpromoted", "'unpromoted' has no champion yet"),
        ("nobody", "no registered model 'nobody'"),
    ]:
        result = project.run(
            sys.executable, "main.py", "main.steps=test_model", f"evaluate.registered_model_name={name}"
        )
        # refused before anything launches: one line
        assert result.returncode == 1 and result.stderr.startswith(f"error: {message}"), result.stderr[-800:]
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-800:]


def test_serving_without_a_champion_stops_with_one_line(project, tmp_path):
    env = project.env | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", "sheldon.serving.serve", "model", "--port", str(free_port())],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert said(result.stderr) == [
        f"error: no registered model {MODEL!r}: run the pipeline; evaluate registers each model it scores"
    ]
