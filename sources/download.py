"""The download cache: public dumps fetched once, resumed when interrupted, reused when complete.

``fetch(url, cache_dir)`` downloads into ``cache_dir/downloads/<hash>-<name>`` through a ``.part`` file: an
interrupted download resumes with an HTTP Range request, a complete file is reused without touching the network
(its size is checked against what the server announced, kept in a small ``.meta.json`` beside it), and a size
mismatch is never renamed into place. Offline, or on any HTTP or network failure, it raises
:class:`sources.base.InputError` with one line that says to pass ``--input PATH``.

``extract(archive, cache_dir)`` unpacks a downloaded zip or tar archive once (safely: no paths outside the
target folder, no links or devices) and returns the folder, for sources whose public file is an archive.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager

from sources.base import InputError

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "pair-curation/0.1 (+https://github.com/nomic-ai/contrastors)"


def cache_path(url: str, cache_dir: str) -> str:
    """Where ``url`` is cached: a short hash of the URL keeps two files of the same name apart."""
    parsed = urllib.parse.urlsplit(url)
    name = os.path.basename(parsed.path.rstrip("/")) or parsed.netloc or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", urllib.parse.unquote(name))[:120]
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return os.path.join(os.path.expanduser(cache_dir), "downloads", f"{digest}-{name}")


def _fail(url: str, reason: str) -> InputError:
    return InputError(f"cannot download {url}: {reason}; pass --input PATH")


def error_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        return str(inner.strerror if isinstance(inner, OSError) and inner.strerror else inner)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _read_meta(path: str) -> dict:
    try:
        with open(path + ".meta.json", encoding="utf-8") as handle:
            meta = json.load(handle)
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_meta(path: str, meta: dict) -> None:
    temporary = path + ".meta.json.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, sort_keys=True)
    os.replace(temporary, path + ".meta.json")


def _complete(path: str, url: str) -> bool:
    """A cached file is reused when it exists and has the size the server announced for it."""
    if not os.path.isfile(path):
        return False
    meta = _read_meta(path)
    if meta.get("url") not in (None, url):
        return False
    expected = meta.get("bytes")
    return expected is None or os.path.getsize(path) == expected


@contextmanager
def _locked(path: str):
    """One process at a time per cached file (two runs sharing a cache must not write one .part together).

    The ``.lock`` file is removed when the holder is done, whether the download worked or failed, so the cache
    holds only downloads. A waiter that got the lock on a file removed meanwhile locks the new one instead."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock_path = path + ".lock"
    while True:
        lock = open(lock_path, "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = os.fstat(lock.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        lock.close()
    try:
        yield
    finally:
        # Removed while still held: a waiter sees its file is gone and retries on a fresh one.
        try:
            os.unlink(lock_path)
        except FileNotFoundError:
            pass
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _total_size(response, resumed_from: int) -> int | None:
    """The full size of the file from a 200 (Content-Length) or 206 (Content-Range: bytes a-b/total)."""
    if response.status == 206:
        match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match and match.group(3) != "*":
            return int(match.group(3))
        length = response.headers.get("Content-Length")
        return resumed_from + int(length) if length and length.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch(url: str, cache_dir: str, *, timeout_s: float = 60, progress: bool = True,
          sha256: str | None = None) -> str:
    """Downloads ``url`` into the cache (or reuses it) and returns the local path.

    Resumes a ``.part`` left by an interrupted download with an HTTP Range request (a server that ignores the
    range sends the whole file and the download restarts). The finished file must have the announced size
    (and ``sha256`` when given) before it is renamed into place. Raises InputError (one line) on failure.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InputError(f"cannot download {url}: only http:// and https:// URLs are fetched; pass --input PATH")
    path = cache_path(url, cache_dir)
    with _locked(path):
        if _complete(path, url):
            return path
        part = path + ".part"
        size, total = _download(url, part, timeout_s, progress)
        if total is not None and size != total:
            raise _fail(url, f"got {size} bytes of {total}; run again to resume")
        if sha256 is not None:
            digest = _sha256_file(part)
            if digest != sha256.lower():
                os.remove(part)
                raise _fail(url, f"sha256 mismatch (got {digest}, expected {sha256})")
        _write_meta(path, {"url": url, "bytes": size})
        os.replace(part, path)
        return path


def _download(url: str, part: str, timeout_s: float, progress: bool) -> tuple[int, int | None]:
    """Fills ``part`` (resuming what it holds); returns its size and the size the server announced."""
    for _attempt in range(2):
        resume_from = os.path.getsize(part) if os.path.isfile(part) else 0
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        if resume_from:
            request.add_header("Range", f"bytes={resume_from}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and resume_from:
                # The range starts at or past the end: nothing proves the .part is whole, so start again.
                os.remove(part)
                continue
            raise _fail(url, error_reason(exc)) from None
        except Exception as exc:  # URLError, timeouts, refused connections, bad certificates
            raise _fail(url, error_reason(exc)) from None
        with response:
            if response.status != 206:
                resume_from = 0  # the server ignored the range and sends the whole file
            total = _total_size(response, resume_from)
            try:
                _stream_to(response, part, resume_from, total, url, progress)
            except Exception as exc:  # the connection dropped: keep the .part for the next run
                got = os.path.getsize(part) if os.path.isfile(part) else 0
                raise _fail(url, f"interrupted after {got} bytes ({error_reason(exc)}); run again to resume") \
                    from None
        return os.path.getsize(part), total
    raise _fail(url, "the server refuses byte ranges for this file")


def _stream_to(response, part: str, resume_from: int, total: int | None, url: str, progress: bool) -> None:
    from tqdm import tqdm

    mode = "ab" if resume_from else "wb"
    name = os.path.basename(urllib.parse.urlsplit(url).path) or url
    with open(part, mode) as out, tqdm(total=total, initial=resume_from, unit="B", unit_scale=True,
                                       unit_divisor=1024, desc=name[:40], file=sys.stderr,
                                       disable=not progress, leave=False) as bar:
        while True:
            chunk = response.read(_CHUNK_BYTES)
            if not chunk:
                break
            out.write(chunk)
            bar.update(len(chunk))


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_archive(path: str) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def extract(archive: str, cache_dir: str | None = None, *, max_bytes: int = 64 << 30) -> str:
    """Unpacks a zip or tar(.gz/.bz2/.xz) archive once, next to it (or under cache_dir), and returns the folder.

    Members that would land outside the folder, links and device files are refused (tarfile's "data" filter;
    zip names are checked the same way). An archive whose members add up to more than ``max_bytes`` (a zip or
    tar bomb) is refused before anything is written; zipfile never inflates past a member's declared size. A
    marker file says the extraction finished.
    """
    base = os.path.basename(archive)
    parent = os.path.join(os.path.expanduser(cache_dir), "extracted") if cache_dir else os.path.dirname(archive)
    target = os.path.join(parent, base + ".d")
    marker = os.path.join(target, ".extracted")
    if os.path.isfile(marker):
        return target
    staging = target + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                root = os.path.realpath(staging)
                _check_total(archive, sum(member.file_size for member in bundle.infolist()), max_bytes)
                for member in bundle.infolist():
                    destination = os.path.realpath(os.path.join(staging, member.filename))
                    if not destination.startswith(root + os.sep) and destination != root:
                        raise InputError(f"unsafe path in archive {archive}: {member.filename}")
                bundle.extractall(staging)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                _check_total(archive, sum(member.size for member in bundle.getmembers()), max_bytes)
                try:
                    bundle.extractall(staging, filter="data")
                except tarfile.FilterError as exc:
                    raise InputError(f"unsafe member in archive {archive}: {exc}") from None
        else:
            raise InputError(f"not a zip or tar archive: {archive}")
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"cannot extract {archive}: {error_reason(exc)}") from None
    except InputError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(base + "\n")
    return target


def _check_total(archive: str, total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise InputError(f"archive {archive} would unpack to {total:,} bytes, over the {max_bytes:,} byte limit "
                         "(download.max_extracted_bytes)")


def fetch_inputs(urls: list[str], download_config, *, extract_archives: bool = True,
                 progress: bool = True) -> list[str]:
    """The local paths (archives unpacked into folders) for a source's ``urls``; used by default_inputs."""
    cache_dir = getattr(download_config, "cache_dir", "~/.cache/pair-curation")
    timeout_s = getattr(download_config, "timeout_s", 60.0)
    max_bytes = getattr(download_config, "max_extracted_bytes", 64 << 30)
    paths = []
    for url in urls:
        path = fetch(url, cache_dir, timeout_s=timeout_s, progress=progress)
        paths.append(extract(path, cache_dir, max_bytes=max_bytes) if extract_archives and is_archive(path)
                     else path)
    return paths
