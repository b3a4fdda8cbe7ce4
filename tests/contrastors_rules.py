"""Reading a release the way contrastors' loader does, written from its rules (not its code).

contrastors (nomic-ai/contrastors, ``src/contrastors/dataset/text_text_loader.py`` at commit 613ddfd) is not on
PyPI; these are the facts of its ``StreamingShardDataset`` that decide whether it can read a release:

1. The data config is YAML ``{"datasets": [...]}``; every entry's keys must be among ``name bucket objective
   weight kd_loss query_only query_prefix document_prefix`` (an assert).
2. ``bucket`` is expanded by webdataset (braceexpand): ``{00000..00004}`` is a zero-padded range, ``{a,b}`` a
   list. URLs that do not all start with ``s3://`` are read from the local filesystem.
3. The index files are read from the pattern's folder (the bucket minus its last ``/`` part):
   ``counts.json`` (its ``count_per_file`` when present) and ``offsets.json.gz`` (gzip JSON). ``s3://`` is
   removed from every key of both.
4. A shard is looked up by ``normalize_url``: its URL split on ``/``, the last four parts when there are six
   or more, else the last three. A shard it cannot count (count 0) is dropped, by removing ``"s3://" + key``
   from its URL list: a ValueError when that is not the shard's URL.
5. Line ``i`` of a shard is ``offsets[key][str(i)] == [start, end)`` in the *decompressed* stream, newline
   included: it seeks to ``start`` and reads ``end - start`` bytes, one JSON object.
6. The objective's ``columns`` must be in the row's ``metadata.objective[type]``; for ``triplet`` the documents
   of a row are ``[document] + negatives[:num_negatives]``.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from typing import Any, Callable, BinaryIO

import yaml

ACCEPTED_KEYS = set("name bucket objective weight kd_loss query_only query_prefix document_prefix".split())
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    if ".." in body:
        low, high = body.split("..")
        choices = [str(number).zfill(len(low)) for number in range(int(low), int(high) + 1)]
    else:
        choices = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [url for choice in choices for url in expand_braces(head + choice + tail)]


def normalize_url(url: str) -> str:
    parts = url.split("/")
    return "/".join(parts[-4:] if len(parts) >= 6 else parts[-3:])


class RangedS3Object(io.RawIOBase):
    """A seekable read-only view of one S3 object that fetches what is read with ranged GETs."""

    def __init__(self, client, bucket: str, key: str, block: int = 1 << 16):
        self.client, self.bucket, self.key, self.block = client, bucket, key, block
        self.size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        self.position = 0
        self.ranged_gets = 0
        self._cache: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def _block(self, number: int) -> bytes:
        if number not in self._cache:
            start = number * self.block
            end = min(self.size, start + self.block) - 1
            response = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end}")
            self.ranged_gets += 1
            self._cache = {number: response["Body"].read()}
        return self._cache[number]

    def readinto(self, buffer) -> int:
        if self.position >= self.size:
            return 0
        number, skip = divmod(self.position, self.block)
        data = self._block(number)[skip:skip + len(buffer)]
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


def s3_opener(client) -> Callable[[str], BinaryIO]:
    def open_url(url: str) -> BinaryIO:
        bucket, _, key = url[len("s3://"):].partition("/")
        return io.BufferedReader(RangedS3Object(client, bucket, key))
    return open_url


def local_opener(root) -> Callable[[str], BinaryIO]:
    """Relative URLs resolve against ``root``: the trainer's working directory."""
    return lambda url: open(root / url, "rb")


def read_like_contrastors(config_text: str, open_url: Callable[[str], BinaryIO], num_negatives: int = 7
                          ) -> dict[str, list[dict[str, Any]]]:
    """Every row each dataset entry yields, in shard and line order, checked as the loader would use it."""
    config = yaml.safe_load(config_text)
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in config["datasets"]:
        assert set(entry) <= ACCEPTED_KEYS, sorted(entry)
        urls = expand_braces(entry["bucket"])
        folder = "/".join(entry["bucket"].split("/")[:-1])
        with open_url(f"{folder}/counts.json") as stream:
            counts = json.load(stream)
        counts = counts.get("count_per_file", counts)
        counts = {key.replace("s3://", ""): count for key, count in counts.items()}
        with open_url(f"{folder}/offsets.json.gz") as raw, gzip.open(raw, "rt") as stream:
            offsets = {key.replace("s3://", ""): lines for key, lines in json.load(stream).items()}
        objective = entry["objective"]
        rows = []
        for url in urls:
            key = normalize_url(url)
            count = counts.get(key, 0)
            # A shard counted 0 would be dropped (or crash the loader under a prefix): never acceptable here.
            assert count > 0, f"{url}: looked up as {key!r}, not in counts.json ({sorted(counts)[:3]})"
            with open_url(url) as raw, gzip.GzipFile(fileobj=raw) as stream:
                for line in range(count):
                    start, end = offsets[key][str(line)]
                    stream.seek(start)
                    row = json.loads(stream.read(end - start).decode())
                    assert objective["columns"] in row["metadata"]["objective"][objective["type"]]
                    if objective["type"] == "triplet":
                        documents = [row["document"]] + row["negatives"][:num_negatives]
                        assert len(documents) == 1 + num_negatives, f"{url} line {line}: {len(documents)} documents"
                    rows.append(row)
        out[entry["name"]] = rows
    return out
