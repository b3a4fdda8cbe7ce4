"""Bounded reads of release objects for the tools that read releases someone else may have made (verify,
explain): a size limit before anything is fetched whole, and gzip shards streamed line by line with a line
limit, so a gzip bomb or a 1 GB manifest fails fast with one line instead of filling memory."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Iterator

from pipelines.release.store import ReleaseStore, StoreError

# A manifest lists every shard with a few fields: megabytes for the largest releases, never gigabytes.
MAX_MANIFEST_BYTES = 64 << 20
# One pair line holds a query, a document and its negatives (each bounded by the readers' field limits).
MAX_LINE_BYTES = 64 << 20
# counts.json and the decompressed offsets.json.gz hold a few dozen bytes per row.
INDEX_BYTES_PER_ROW = 64
INDEX_BYTES_PER_SHARD = 1024
INDEX_SLACK_BYTES = 1 << 20


class ObjectTooLarge(StoreError):
    """An object (or one of its lines) is past the limit for what it claims to be."""


def get_bounded(store: ReleaseStore, key: str, limit: int, what: str = "object") -> bytes:
    """The whole object, refused by its size (from a HEAD) before it is fetched when it is over ``limit``."""
    info = store.head(key)
    if info is None:
        raise StoreError(f"{store.uri_for(key)} does not exist")
    if info.size > limit:
        raise ObjectTooLarge(f"{store.uri_for(key)} is {info.size} bytes, more than any {what} "
                             f"({limit} bytes): refused")
    data = store.get_bytes(key)
    if len(data) > limit:  # it grew between the HEAD and the GET
        raise ObjectTooLarge(f"{store.uri_for(key)} is more than {limit} bytes: refused")
    return data


def gzip_lines(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines (with their newline) of a gzip file, streamed; a line past ``max_line_bytes`` raises
    ObjectTooLarge after reading at most that much of it. Gzip damage raises OSError/EOFError/zlib.error."""
    number = 0
    with gzip.open(path, "rb") as stream:
        while True:
            line = stream.readline(max_line_bytes + 1)
            if not line:
                return
            number += 1
            if len(line) > max_line_bytes:
                raise ObjectTooLarge(f"line {number} is longer than {max_line_bytes} bytes")
            yield line


def gunzip_bounded(path: str | Path, limit: int) -> bytes:
    """A whole gzip file decompressed, refused once its output passes ``limit`` bytes."""
    out = bytearray()
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    return bytes(out)
                out += chunk
                if len(out) > limit:
                    raise ObjectTooLarge(f"decompresses to more than {limit} bytes")
    except (OSError, EOFError, zlib.error) as error:
        if isinstance(error, ObjectTooLarge):
            raise
        raise OSError(f"not a valid gzip stream: {error}") from None
