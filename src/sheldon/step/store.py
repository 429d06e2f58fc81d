"""Is the tracking store usable? Checked before anything starts, and without importing MLflow
(~1.7 s), so that an unreachable server or a broken db stops a run within seconds with one line
instead of minutes of MLflow's retries and a traceback. Its artifact store too: a server's
proxied one, or an S3 bucket the steps write to themselves. The environment that points every
process at that store is set here too.

    python -m sheldon.step.store        # checks MLFLOW_TRACKING_URI (default: the repo's mlflow.db)
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import sqlite3
import ssl
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

from sheldon.core.errors import StepError, first_line, shorten
from sheldon.core.paths import REPO_ROOT, absolute_tracking_uri

TIMEOUT_S = 5.0
PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
# The root of a server's proxied artifact store (`mlflow server --artifacts-destination`): listed
# through the server, it fails there when the server cannot reach its object store.
ARTIFACTS_PROBE = "/api/2.0/mlflow-artifacts/artifacts"
MLFLOW_TABLES = {"experiments", "alembic_version"}
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
FIX_URI = "check MLFLOW_TRACKING_URI"


def tracking_environment() -> str:
    """Point this process and its children (through the environment: MLflow need not be loaded)
    at one absolute tracking URI, and quiet the trackers; the URI."""
    uri = absolute_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # costs ~0.8 s a run offline
    # One bar per fetched input, of files copied in milliseconds: noise in a step's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A server proxying an object store (make server) would hand out presigned URLs of the bucket
    # for downloads: every member would then need a route to the bucket. Proxied means proxied.
    os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    os.environ.setdefault("WANDB_DIR", str(REPO_ROOT))
    os.environ.setdefault("WANDB_SILENT", "true")
    return uri


def check_tracking_store(uri: str, timeout: float = TIMEOUT_S) -> None:
    """Raise StepError, with one line naming the store and what to check, unless `uri` (an
    absolute tracking URI) looks usable: an MLflow server that answers, a sqlite file that is an
    MLflow store (or does not exist yet: MLflow creates it), a database server that accepts a
    connection. Other stores (file:, databricks, ...) are left to MLflow."""
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        _check_server(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme.split("+")[0] in DB_PORTS:
        _check_db_server(uri, timeout)


def _shown(uri: str) -> str:
    """The URI without its password, for a message."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return uri.replace(f":{parts.password}@", ":***@", 1)


def _check_server(uri: str, timeout: float) -> None:
    shown = _shown(uri)
    try:
        body = _get(uri, PROBE, timeout)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise StepError(
                f"tracking server {shown} refused access (HTTP {err.code}): check "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
            ) from None
        if err.code < 500:
            raise StepError(
                f"{shown} is not an MLflow tracking server (HTTP {err.code} for "
                f"{PROBE.split('?')[0]}): {FIX_URI}"
            ) from None
        raise StepError(
            f"tracking server {shown} answers HTTP {err.code} ({err.reason}): check the server's log"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):
            raise StepError(
                f"tracking server {shown}: TLS failed ({reason.reason or reason}): set "
                "MLFLOW_TRACKING_SERVER_CERT_PATH, or MLFLOW_TRACKING_INSECURE_TLS=true"
            ) from None
        raise StepError(
            f"tracking server {shown} is unreachable ({why_failed(reason, timeout)}): start it, or {FIX_URI}"
        ) from None
    except (ValueError, http.client.InvalidURL) as err:  # e.g. a port that is not a number
        raise StepError(f"tracking URI {shown} is malformed ({err}): {FIX_URI}") from None
    except http.client.HTTPException as err:
        raise StepError(
            f"{shown} is not an MLflow tracking server (it does not answer in HTTP: "
            f"{type(err).__name__}): {FIX_URI}"
        ) from None
    try:
        answer_is_mlflow = isinstance(json.loads(body), dict)
    except ValueError:
        answer_is_mlflow = False
    if not answer_is_mlflow:
        raise StepError(
            f"{shown} is not an MLflow tracking server (its answer to {PROBE.split('?')[0]} is "
            f"not JSON): {FIX_URI}"
        )
    _check_proxied_artifacts(uri, timeout)


def _check_proxied_artifacts(uri: str, timeout: float) -> None:
    """A server that proxies artifacts but cannot reach its object store (credentials the bucket
    refuses, a bucket that is gone) would fail each step as it logs: say so before any starts."""
    try:
        _get(uri, ARTIFACTS_PROBE, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 404:  # a server that does not proxy artifacts: the steps write them
            return
        try:
            detail = json.loads(err.read(1 << 16)).get("message", "")
        except (ValueError, AttributeError, OSError):
            detail = ""
        raise StepError(
            f"tracking server {_shown(uri)} cannot reach its artifact store (HTTP {err.code}"
            f"{': ' + shorten(first_line(detail), 240) if detail else ''}): check the server's object-store "
            "credentials and bucket"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return  # the server answered the probe before: a blip, which the steps' retries absorb


def _get(uri: str, path: str, timeout: float) -> bytes:
    """GET `path` of the server at `uri`, with the credentials MLflow's REST client would send."""
    parts = urlsplit(uri)
    url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/") + path
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    # The credentials MLflow's REST client sends, in its order of preference.
    username = os.environ.get("MLFLOW_TRACKING_USERNAME") or parts.username
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or parts.password
    if username and password:
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    with urllib.request.urlopen(request, timeout=timeout, context=_tls_context()) as answer:
        return answer.read(1 << 20)


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def sqlite_file(uri: str) -> Path | None:
    """The file of a sqlite tracking URI; None for another store, or a db in memory."""
    if uri.split(":", 1)[0].lower() != "sqlite":
        return None
    name = uri.removeprefix("sqlite://").removeprefix("/").split("?")[0]  # sqlite:////abs, sqlite:///rel
    return None if name in ("", ":memory:") else Path(name).resolve()


def _check_sqlite(uri: str) -> None:
    path = sqlite_file(uri)
    if path is None or not path.exists():
        return
    if not path.is_file():
        raise StepError(f"tracking db {path} is not a file: {FIX_URI}")
    try:
        # Read-only: the check never creates or changes the file.
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=TIMEOUT_S)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = MLFLOW_TABLES - tables
            if tables and missing:  # no tables at all: a new store, MLflow fills it
                raise StepError(
                    f"tracking db {path} is a sqlite db but not an MLflow store (no "
                    f"{' or '.join(sorted(missing))} table): {FIX_URI}"
                )
            problem = _quick_check(db)
    except sqlite3.DatabaseError as err:
        problem = str(err)
    if problem and "locked" not in problem:  # locked: another run writes to it; MLflow waits
        raise StepError(
            f"tracking db {path} is unreadable ({problem}): move it aside (a new one is created), "
            f"or {FIX_URI}"
        )


def _quick_check(db: sqlite3.Connection, budget_s: float = 2.0) -> str:
    """sqlite's quick_check, given `budget_s` at most: it reads the whole file, and a large
    healthy store should not delay every run. Returns the first problem found, or ''."""
    deadline = time.monotonic() + budget_s
    db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        first = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.OperationalError as err:
        if "interrupted" in str(err):
            return ""
        raise
    finally:
        db.set_progress_handler(None, 0)
    return "" if first == "ok" else first


def _check_db_server(uri: str, timeout: float) -> None:
    parts = urlsplit(uri)
    try:
        if not parts.hostname:  # a local socket, named in the query
            return
        socket.create_connection(
            (parts.hostname, parts.port or DB_PORTS[parts.scheme.split("+")[0]]), timeout
        ).close()
    except OSError as err:
        raise StepError(
            f"tracking db server {_shown(uri)} is unreachable ({why_failed(err, timeout)}): "
            f"start it, or {FIX_URI}"
        ) from None
    except ValueError as err:  # a port that is not a number
        raise StepError(f"tracking URI {_shown(uri)} is malformed ({err}): {FIX_URI}") from None


def check_artifact_location(location: str, timeout: float = TIMEOUT_S) -> None:
    """Raise StepError, with one line, unless the S3 bucket of `location` (an experiment's artifact
    location, or a server's destination) takes this process's credentials: missing or refused
    credentials, a bucket that does not exist, an endpoint that does not answer. Other locations
    (a server's proxied mlflow-artifacts:, a folder) are checked elsewhere or need no check."""
    parts = urlsplit(location)
    if parts.scheme != "s3":
        return
    import boto3  # here only: ~0.3 s, and S3 stores are the only ones that need it
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, endpoint = parts.netloc, s3_endpoint()
    where = f"s3://{bucket}" + (f" at {endpoint}" if endpoint else "")
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})
    try:
        # A session of its own: the environment as it is now, not as boto3's default one first read it
        s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        s3.list_objects_v2(Bucket=bucket, Prefix=parts.path.lstrip("/"), MaxKeys=1)
    except NoCredentialsError:
        raise StepError(
            f"no credentials for the artifact store {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        ) from None
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404"):
            raise StepError(f"the artifact store's bucket {where} does not exist: create it") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
            raise StepError(
                f"the artifact store {where} refused these credentials ({code}): check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            ) from None
        raise StepError(f"the artifact store {where} failed: {first_line(err)}") from None
    except BotoCoreError as err:  # an endpoint that does not answer, a malformed one
        raise StepError(f"the artifact store {where} is unreachable: {first_line(err)}") from None


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint MLflow uses (MinIO, moto ...); None means AWS itself."""
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None


def why_failed(reason: object, timeout: float) -> str:
    """A connection failure in a few words: 'connection refused', 'no answer within 5 s'."""
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


def main() -> None:
    try:
        check_tracking_store(absolute_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")))
    except StepError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
