"""Where a release lives: a local folder or an S3-compatible bucket, behind one small interface.

Shard writers on Beam workers and the finalizer write through a store, never through a shared local disk, so
the same graph publishes to a laptop folder and to R2 from Dataflow. Keys are release-relative POSIX paths
("data/quora_duplicates/shard-00000.jsonl.gz").
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipelines.core.errors import UsageError


class StoreError(UsageError):
    """A destination problem, with a one-line message (never containing secrets)."""


class AlreadyExists(StoreError):
    """A conditional create found the object already there."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None


# What each kind of release object is served as. Gzip files get no Content-Encoding on purpose: clients must
# receive and keep the .gz bytes (which the sha256 in the manifest covers), not a transparently decoded stream.
_CONTENT_TYPES = (
    (".jsonl.gz", "application/jsonl"),
    (".json.gz", "application/json"),
    (".jsonl", "application/jsonl"),
    (".json", "application/json"),
    (".md", "text/markdown; charset=utf-8"),
    (".yaml", "application/yaml"),
    (".html", "text/html; charset=utf-8"),
)


def content_type_for(key: str) -> str:
    """The Content-Type a release object is stored with, from its name."""
    for suffix, content_type in _CONTENT_TYPES:
        if key.endswith(suffix):
            return content_type
    return "application/octet-stream"


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ReleaseStore:
    """The interface every destination implements.

    ``content_type=None`` means "from the key's suffix" (:func:`content_type_for`). With
    ``skip_if_unchanged`` (the default) an object already there with the same size and sha256 is left alone,
    so a publish that is started again after an interruption writes only what is missing or differs.
    ``if_none_match`` creates the object only if it is absent (raising :class:`AlreadyExists` otherwise): the
    manifest commit. ``sha256`` may pass a digest the caller already computed, to save a second pass.
    """

    uri: str

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None,
                  content_encoding: str | None = None, if_none_match: bool = False,
                  skip_if_unchanged: bool = True) -> ObjectInfo:
        raise NotImplementedError

    def put_file(self, key: str, path: str | Path, *, content_type: str | None = None,
                 content_encoding: str | None = None, if_none_match: bool = False,
                 skip_if_unchanged: bool = True, sha256: str | None = None) -> ObjectInfo:
        return self.put_bytes(key, Path(path).read_bytes(), content_type=content_type,
                              content_encoding=content_encoding, if_none_match=if_none_match,
                              skip_if_unchanged=skip_if_unchanged)

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local file holding the object while the block runs (a temporary download for remote stores)."""
        with tempfile.TemporaryDirectory(prefix="release-object-") as folder:
            path = Path(folder) / "object"
            path.write_bytes(self.get_bytes(key))
            yield path

    def head(self, key: str) -> ObjectInfo | None:
        """Size (and sha256 where the store keeps it) of an object, or None when it is absent."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list_keys(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def uri_for(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"refusing unsafe object key {key!r}")
    return key


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Release files are for sharing: the usual 0644 (under the umask), not the 0600 of a temp file.
_FILE_MODE = 0o666 & ~_umask()


def _temp_beside(target: Path):
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False)
    os.chmod(handle.name, _FILE_MODE)
    return handle


class LocalStore(ReleaseStore):
    """A release folder on a local (or mounted) disk. Writes are atomic: temp file, then rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def _unchanged(self, target: Path, size: int, digest: str) -> bool:
        return target.is_file() and target.stat().st_size == size and sha256_file(target) == digest

    def put_bytes(self, key, data, *, content_type=None, content_encoding=None, if_none_match=False,
                  skip_if_unchanged=True):
        with self._errors("write", key):
            return self._put_bytes(key, data, if_none_match, skip_if_unchanged)

    def put_file(self, key, path, *, content_type=None, content_encoding=None, if_none_match=False,
                 skip_if_unchanged=True, sha256=None):
        with self._errors("write", key):
            return self._put_file(key, path, if_none_match, skip_if_unchanged, sha256)

    @contextmanager
    def _errors(self, action: str, key: str):
        """A full disk, a read-only or vanished folder: one line naming the object, never a traceback."""
        try:
            yield
        except OSError as exc:
            raise StoreError(f"cannot {action} {self.uri_for(key)}: {exc.strerror or exc}") from None

    def _put_bytes(self, key, data, if_none_match, skip_if_unchanged):
        target = self._path(key)
        digest = hashlib.sha256(data).hexdigest()
        if skip_if_unchanged and not if_none_match and self._unchanged(target, len(data), digest):
            return ObjectInfo(key=key, size=len(data), sha256=digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = _temp_beside(target)
        try:
            with handle:
                handle.write(data)
            if if_none_match:
                try:
                    # link() fails if the name exists: an atomic create-if-absent on POSIX filesystems.
                    os.link(handle.name, target)
                except FileExistsError:
                    # The very same bytes already there are not a conflict (as in S3Store, where a retried
                    # commit meets its own first attempt); anything else is never replaced.
                    if not self._unchanged(target, len(data), digest):
                        raise AlreadyExists(f"{self.uri_for(key)} already exists") from None
            else:
                os.replace(handle.name, target)
        finally:
            if os.path.exists(handle.name):
                os.unlink(handle.name)
        return ObjectInfo(key=key, size=len(data), sha256=digest)

    def _put_file(self, key, path, if_none_match, skip_if_unchanged, sha256):
        target = self._path(key)
        if skip_if_unchanged and not if_none_match and target.is_file():
            digest = sha256 or sha256_file(path)
            if self._unchanged(target, os.path.getsize(path), digest):
                return ObjectInfo(key=key, size=target.stat().st_size, sha256=digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = _temp_beside(target)
        handle.close()
        try:
            with open(path, "rb") as src, open(handle.name, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
            if if_none_match:
                try:
                    os.link(handle.name, target)
                except FileExistsError:
                    if not self._unchanged(target, os.path.getsize(handle.name), sha256_file(handle.name)):
                        raise AlreadyExists(f"{self.uri_for(key)} already exists") from None
            else:
                os.replace(handle.name, target)
        finally:
            if os.path.exists(handle.name):
                os.unlink(handle.name)
        return ObjectInfo(key=key, size=target.stat().st_size, sha256=sha256_file(target))

    def get_bytes(self, key):
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.uri_for(key)} does not exist") from None
        except OSError as exc:
            raise StoreError(f"cannot read {self.uri_for(key)}: {exc.strerror or exc}") from None

    @contextmanager
    def local_path(self, key):
        path = self._path(key)
        if not path.is_file():
            raise StoreError(f"{self.uri_for(key)} does not exist")
        yield path

    def head(self, key):
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key=key, size=path.stat().st_size)

    def list_keys(self, prefix=""):
        if not self.root.exists():
            return []
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key):
        path = self._path(key)
        with self._errors("delete", key):
            if path.exists():
                path.unlink()

