"""A release in an S3-compatible bucket: Cloudflare R2 first, and AWS S3, MinIO or SeaweedFS alike.

Where the bucket is and who may write to it comes only from the standard AWS settings (``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``, or ``AWS_PROFILE`` and its config files), never from the release URI or a flag; messages
name the bucket, key and error code, never a key or secret. Without a configured region a custom endpoint
gets ``auto`` (what R2 expects).

Requests are shaped for R2's rules: checksums only where an operation requires one (no aws-chunked bodies or
checksum trailers, which R2 rejects), no ACL, tagging or object-lock headers, and multipart uploads cut into
parts of one fixed size (all equal but the last). Each object carries its Content-Type and, in user
metadata, its sha256, so a publish started again after an interruption can tell, from a HEAD, which objects
are already there intact and upload only what is missing or differs.

Transient faults (5xx, throttling, timeouts, dropped connections) are retried by botocore's ``standard`` mode
with jittered exponential backoff; HTTP 429, which botocore leaves alone, gets a few slower retries here.
Writes whose response was lost are recognised on the retry: a conditional create answered 412, or a
multipart completion answered NoSuchUpload, counts as done when the object there is byte-for-byte ours.

The store keeps only its bucket, prefix and settings when pickled; the boto3 client is created lazily in each
process (a Beam worker, the finalizer, the CLI), so it works inside DoFns on Dataflow as well as locally.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import urlsplit

from pipelines.release.store import (
    AlreadyExists,
    ObjectInfo,
    ReleaseStore,
    StoreError,
    _safe_key,
    content_type_for,
    sha256_file,
)

MIB = 1 << 20
MIN_PART_SIZE = 5 * MIB  # S3's and R2's floor for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 16 * MIB
SHA256_METADATA_KEY = "sha256"  # stored as x-amz-meta-sha256

_ACCESS_ERRORS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                  "TokenRefreshRequired", "AuthorizationHeaderMalformed", "Unauthorized", "403", "401"}
_CONDITION_FAILED = {"PreconditionFailed", "412"}
_STREAM_RETRIES = 5  # whole-object re-downloads when a response body breaks off mid-stream
_THROTTLE_RETRIES = 5


def _error_code(error: Exception) -> tuple[str, int | None, str]:
    response = getattr(error, "response", None) or {}
    details = response.get("Error", {}) or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return str(details.get("Code", "") or ""), status, str(details.get("Message", "") or "")


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class S3Store(ReleaseStore):
    """A release under ``s3://bucket/prefix``."""

    def __init__(self, bucket: str, prefix: str = "", *, part_size: int = DEFAULT_PART_SIZE,
                 max_concurrency: int = 4, max_attempts: int = 10, connect_timeout: float = 10.0,
                 read_timeout: float = 120.0):
        if not bucket or "/" in bucket:
            raise StoreError(f"invalid S3 bucket name {bucket!r}")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise StoreError(f"S3 part size must be between 5 MiB and 5 GiB, not {part_size} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            _safe_key(self.prefix)
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        self.max_attempts = max(1, max_attempts)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = None
        self._client_lock = threading.Lock()
        self._bucket_checked = False

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> "S3Store":
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise StoreError(f"not an S3 release URI: {uri!r} (expected s3://bucket/prefix)")
        if "@" in parts.netloc or ":" in parts.netloc or parts.query or parts.fragment:
            # Credentials and endpoints come from the AWS environment or profile, never from the URI.
            raise StoreError("an S3 release URI is s3://bucket/prefix only: endpoint and keys come from the "
                             "AWS environment variables or profile")
        return cls(parts.netloc, parts.path, **options)

    # Pickling keeps the destination and settings only: each process builds its own client.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_client_lock"] = None
        state["_bucket_checked"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    # -- client -------------------------------------------------------------------------------------------

    @property
    def client(self):
        """This process's boto3 S3 client, created on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self):
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        try:
            session = boto3.session.Session()
            if session.get_credentials() is None:
                raise StoreError("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                 "(or AWS_PROFILE) in the environment")

            def build(region: str | None):
                config = Config(
                    region_name=region,
                    signature_version="s3v4",
                    retries={"mode": "standard", "max_attempts": self.max_attempts},
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    tcp_keepalive=True,
                    max_pool_connections=max(10, 2 * self.max_concurrency),
                    # R2 rejects the aws-chunked checksum trailers boto3 >= 1.36 sends by default.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                return session.client("s3", region_name=region, config=config)

            client = build(session.region_name)
            if session.region_name is None and "amazonaws.com" not in client.meta.endpoint_url:
                client = build("auto")  # R2's region; other S3-compatible servers accept it too
            return client
        except BotoCoreError as error:
            # e.g. ProfileNotFound, a malformed config file: botocore's message names the problem, not secrets.
            raise StoreError(f"cannot set up the S3 client for {self.uri}: {_one_line(error)}") from None

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def _object_key(self, key: str) -> str:
        _safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- error handling -----------------------------------------------------------------------------------

    def _store_error(self, error: Exception, action: str, key: str | None) -> StoreError:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        where = self.uri_for(key) if key else self.uri
        if isinstance(error, StoreError):
            return error
        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(f"no usable S3 credentials to {action} {where}: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if isinstance(error, ClientError):
            code, status, message = _error_code(error)
            if code == "NoSuchBucket":
                return StoreError(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
            if code in _ACCESS_ERRORS or status in (401, 403):
                return StoreError(f"access denied ({code or status}) to {action} {where}: check the S3 "
                                  "credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the AWS profile")
            detail = f"{code or status}" + (f": {_one_line(message)}" if message else "")
            return StoreError(f"cannot {action} {where}: {detail}")
        # Connection errors and timeouts that outlasted every retry.
        return StoreError(f"cannot {action} {where} via {self.endpoint}: {_one_line(error)}")

    def _call(self, action: str, key: str | None, operation: Callable[..., Any], **kwargs: Any) -> Any:
        """One S3 call with its errors translated to one-line StoreErrors (ClientErrors are re-raised for
        callers that handle some codes themselves: see ``_raw_call``)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._raw_call(operation, **kwargs)
        except (BotoCoreError, ClientError) as error:
            raise self._store_error(error, action, key) from None

    def _raw_call(self, operation: Callable[..., Any], **kwargs: Any) -> Any:
        """The call, retried a few more times on HTTP 429, which botocore does not treat as transient."""
        from botocore.exceptions import ClientError

        for attempt in range(_THROTTLE_RETRIES + 1):
            try:
                return operation(**kwargs)
            except ClientError as error:
                _, status, _ = _error_code(error)
                if status != 429 or attempt == _THROTTLE_RETRIES:
                    raise
                time.sleep(random.uniform(0.5, 1.0) * 2 ** attempt)
        raise AssertionError("unreachable")

    def check(self) -> None:
        """Fail with one clear line unless the bucket exists and these credentials may list it."""
        self._call("list", None, self.client.list_objects_v2, Bucket=self.bucket,
                   Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1)
        self._bucket_checked = True

    # -- reads --------------------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._raw_call(self.client.head_object, Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            code, status, _ = _error_code(error)
            if status == 404 or code in ("NoSuchKey", "NotFound", "404"):
                # A HEAD answers 404 for a missing bucket too: tell the two apart once.
                if not self._bucket_checked:
                    self.check()
                return None
            raise self._store_error(error, "read", key) from None
        except BotoCoreError as error:
            raise self._store_error(error, "read", key) from None
        metadata = response.get("Metadata") or {}
        return ObjectInfo(key=key, size=int(response["ContentLength"]), sha256=metadata.get(SHA256_METADATA_KEY))

    def _download(self, key: str, sink: BinaryIO) -> None:
        """Stream an object into ``sink``, starting over when the connection breaks off mid-body."""
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(_STREAM_RETRIES + 1):
            sink.seek(0)
            sink.truncate()
            try:
                response = self._raw_call(self.client.get_object, Bucket=self.bucket, Key=self._object_key(key))
                expected = int(response["ContentLength"])
                body = response["Body"]
                try:
                    shutil.copyfileobj(body, sink, 1 << 20)
                finally:
                    body.close()
                if sink.tell() != expected:
                    raise ConnectionError(f"short read: {sink.tell()} of {expected} bytes")
                return
            except ClientError as error:
                code, status, _ = _error_code(error)
                if code in ("NoSuchKey", "404") or status == 404:
                    if not self._bucket_checked:
                        self.check()
                    raise StoreError(f"{self.uri_for(key)} does not exist") from None
                raise self._store_error(error, "read", key) from None
            except (BotoCoreError, ConnectionError, OSError) as error:
                # botocore retried the request itself; a body cut short surfaces here instead.
                if attempt == _STREAM_RETRIES:
                    raise self._store_error(error, "read", key) from None
                time.sleep(random.uniform(0.05, 0.1) * 2 ** attempt)

    def get_bytes(self, key: str) -> bytes:
        buffer = io.BytesIO()
        self._download(key, buffer)
        return buffer.getvalue()

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="release-object-") as folder:
            path = Path(folder) / Path(key).name
            with open(path, "w+b") as handle:
                self._download(key, handle)
            yield path

    def list_keys(self, prefix: str = "") -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        root = f"{self.prefix}/" if self.prefix else ""
        keys = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                keys.extend(item["Key"][len(root):] for item in page.get("Contents", []))
        except (BotoCoreError, ClientError) as error:
            raise self._store_error(error, "list", prefix or None) from None
        return sorted(keys)

    def presigned_url(self, key: str, expires_in: int = 3600) -> str:
        """A time-limited HTTPS GET link to one object, for readers without credentials."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object_key(key)}, ExpiresIn=expires_in)

    # -- writes -------------------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._object_key(key))

    def _is_ours(self, key: str, size: int, digest: str) -> bool:
        existing = self.head(key)
        return existing is not None and existing.size == size and existing.sha256 == digest

    def _object_args(self, key: str, digest: str, content_type: str | None,
                     content_encoding: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._object_key(key),
            "ContentType": content_type or content_type_for(key),
            "Metadata": {SHA256_METADATA_KEY: digest},
        }
        if content_encoding:
            args["ContentEncoding"] = content_encoding
        return args

    def put_bytes(self, key, data, *, content_type=None, content_encoding=None, if_none_match=False,
                  skip_if_unchanged=True):
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        info = ObjectInfo(key=key, size=len(data), sha256=digest)
        if skip_if_unchanged and not if_none_match and self._is_ours(key, len(data), digest):
            return info
        self._put_object(key, data, digest, self._object_args(key, digest, content_type, content_encoding),
                         if_none_match)
        return info

    def _put_object(self, key: str, data: bytes, digest: str, args: dict[str, Any], if_none_match: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if if_none_match:
            args["IfNoneMatch"] = "*"
        try:
            self._raw_call(self.client.put_object, Body=data, **args)
        except ClientError as error:
            code, status, _ = _error_code(error)
            if if_none_match and (code in _CONDITION_FAILED or status == 412):
                self._raise_unless_ours(key, len(data), digest)
                return
            raise self._store_error(error, "write", key) from None
        except BotoCoreError as error:
            raise self._store_error(error, "write", key) from None

    def _raise_unless_ours(self, key: str, size: int, digest: str) -> None:
        # A retried conditional write whose first attempt landed but whose response was lost meets its own
        # object: that is success. Anything else is someone else's object, left untouched.
        if not self._is_ours(key, size, digest):
            raise AlreadyExists(f"{self.uri_for(key)} already exists")

    def put_file(self, key, path, *, content_type=None, content_encoding=None, if_none_match=False,
                 skip_if_unchanged=True, sha256=None):
        size = os.path.getsize(path)
        digest = sha256 or sha256_file(path)
        info = ObjectInfo(key=key, size=size, sha256=digest)
        if skip_if_unchanged and not if_none_match and self._is_ours(key, size, digest):
            return info
        args = self._object_args(key, digest, content_type, content_encoding)
        if size <= self.part_size:
            self._put_object(key, Path(path).read_bytes(), digest, args, if_none_match)
        else:
            self._put_multipart(key, path, size, digest, args, if_none_match)
        return info

    def part_size_for(self, size: int) -> int:
        """The one part size used for an object: the configured size, or the smallest whole MiB multiple that
        keeps the object within 10,000 parts."""
        needed = math.ceil(size / MAX_PARTS)
        if needed <= self.part_size:
            return self.part_size
        return min(MAX_PART_SIZE, math.ceil(needed / MIB) * MIB)

    def _put_multipart(self, key: str, path: str | Path, size: int, digest: str, args: dict[str, Any],
                       if_none_match: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        part_size = self.part_size_for(size)
        part_count = math.ceil(size / part_size)
        if part_count > MAX_PARTS:
            raise StoreError(f"{path} is too large for one S3 object ({size} bytes)")
        upload_id = self._call("start upload of", key, self.client.create_multipart_upload, **args)["UploadId"]
        target = {"Bucket": args["Bucket"], "Key": args["Key"]}
        completed = False
        try:
            with open(path, "rb") as handle:
                descriptor = handle.fileno()

                def upload_part(number: int) -> dict[str, Any]:
                    # pread: threads share the descriptor without sharing a file position.
                    body = os.pread(descriptor, part_size, (number - 1) * part_size)
                    response = self._raw_call(self.client.upload_part, UploadId=upload_id, PartNumber=number,
                                              Body=body, **target)
                    return {"PartNumber": number, "ETag": response["ETag"]}

                with ThreadPoolExecutor(max_workers=min(self.max_concurrency, part_count)) as pool:
                    parts = list(pool.map(upload_part, range(1, part_count + 1)))
            complete_args = dict(target, UploadId=upload_id, MultipartUpload={"Parts": parts})
            if if_none_match:
                complete_args["IfNoneMatch"] = "*"
            try:
                self._raw_call(self.client.complete_multipart_upload, **complete_args)
                completed = True
            except ClientError as error:
                code, status, _ = _error_code(error)
                if code == "NoSuchUpload" and self._is_ours(key, size, digest):
                    completed = True  # an earlier attempt completed it; the response was lost
                elif if_none_match and (code in _CONDITION_FAILED or status == 412):
                    # Not completed by this call: the upload is aborted below either way.
                    self._raise_unless_ours(key, size, digest)
                else:
                    raise
        except (BotoCoreError, ClientError) as error:
            raise self._store_error(error, "write", key) from None
        finally:
            if not completed:
                self._abort(target, upload_id)

    def _abort(self, target: dict[str, Any], upload_id: str) -> None:
        # Best effort: an upload left behind costs storage until the bucket's lifecycle rule (R2: 7 days)
        # removes it, and must never hide the error that got us here.
        try:
            self.client.abort_multipart_upload(UploadId=upload_id, **target)
        except Exception:  # noqa: BLE001
            pass
