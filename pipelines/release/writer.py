"""Shard writers: pairs and rejects -> gzip JSON-lines shards in a release store, plus contrastors' indexes.

Determinism: a row's shard is hash(id) mod the dataset's shard count (from its row count), rows are sorted
by id inside a shard, JSON keys are sorted, gzip headers carry no name and no timestamp. So the same rows
give the same bytes on any runner, in any order of arrival.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import tempfile
from array import array
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.core.records import dumps_line, id_bucket, to_release_row
from pipelines.release.location import index_key
from pipelines.release.stores import open_store
from pipelines.core.schema import data_shard_key, reject_shard_key

JSONL_GZ = "application/jsonl"  # stored as gzip bytes; no Content-Encoding so clients keep the .gz as is
JSON = "application/json"


def shard_key(kind: str, dataset: str, index: int) -> str:
    return data_shard_key(dataset, index) if kind == "data" else reject_shard_key(dataset, index)


def shard_count(rows: int, rows_per_shard: int) -> int:
    return max(1, math.ceil(rows / rows_per_shard))


def write_jsonl_gz(rows: Iterable[dict[str, Any]], path: str, gzip_level: int, release_rows: bool,
                   negatives_counts: set[int] | None = None) -> tuple[int, array]:
    """Write rows (already in order) as a deterministic gzip of JSON lines.

    Returns (row count, each line's byte length with its newline). The lengths give contrastors' per-line
    [start, end) offsets in the decompressed stream; byte offsets, since lines are ASCII-only. They travel as a
    compact array (4 bytes a row), not as lists, because one worker gathers a whole dataset's to write its
    offsets file. ``negatives_counts`` collects how many negatives the rows have (a triplet dataset has one
    count).
    """
    lengths = array("I")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=gzip_level,
                                                mtime=0) as compressed:
        for row in rows:
            if negatives_counts is not None:
                negatives_counts.add(len(row.get("negatives") or []))
            line = (dumps_line(to_release_row(row) if release_rows else row) + "\n").encode("ascii")
            compressed.write(line)
            lengths.append(len(line))
    return len(lengths), lengths


def line_offsets(lengths: array) -> Iterator[tuple[int, int]]:
    position = 0
    for length in lengths:
        yield position, position + length
        position += length


def sha256_path(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _WriteShard(beam.DoFn):
    def __init__(self, output_uri: str, kind: str, gzip_level: int):
        self.output_uri = output_uri
        self.kind = kind
        self.gzip_level = gzip_level
        self.store = None

    def setup(self):
        self.store = open_store(self.output_uri)

    def process(self, element):
        (dataset, index), rows = element
        # A shard is bounded by design (shard_rows), so holding it to sort is safe.
        ordered = sorted(rows, key=lambda row: (row["id"], dumps_line(row)))
        key = shard_key(self.kind, dataset, index)
        handle = tempfile.NamedTemporaryFile(prefix="shard-", suffix=".jsonl.gz", delete=False)
        handle.close()
        negatives_counts: set[int] = set()
        try:
            count, lengths = write_jsonl_gz(ordered, handle.name, self.gzip_level, release_rows=self.kind == "data",
                                            negatives_counts=negatives_counts)
            size = os.path.getsize(handle.name)
            checksum = sha256_path(handle.name)
            self.store.put_file(key, handle.name, content_type=JSONL_GZ)
        finally:
            os.unlink(handle.name)
        Metrics.counter("release", f"{self.kind}_shards").inc()
        info = {"dataset": dataset, "kind": self.kind, "index": index, "key": key, "rows": count, "bytes": size,
                "sha256": checksum}
        if self.kind == "data":
            info["line_lengths"] = lengths.tobytes()
            info["negatives_counts"] = sorted(negatives_counts)
        yield info


class WriteShards(beam.PTransform):
    """Rows (pairs or rejects) -> shards per dataset; yields one info dict per shard written."""

    def __init__(self, output_uri: str, kind: str, rows_per_shard: int, gzip_level: int):
        super().__init__()
        self.output_uri = output_uri
        self.kind = kind
        self.rows_per_shard = rows_per_shard
        self.gzip_level = gzip_level

    def expand(self, rows):
        rows_per_shard = self.rows_per_shard
        shards_per_dataset = (rows
                              | "CountPerDataset" >> beam.Map(lambda row: (row["dataset"], 1))
                              | "Sum" >> beam.CombinePerKey(sum)
                              | "ShardCount" >> beam.MapTuple(lambda ds, n: (ds, shard_count(n, rows_per_shard))))

        def assign(row, shard_counts):
            dataset = row["dataset"]
            return (dataset, id_bucket(row["id"], shard_counts[dataset])), row

        return (rows
                | "AssignShard" >> beam.Map(assign, shard_counts=beam.pvalue.AsDict(shards_per_dataset))
                | "GroupShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(_WriteShard(self.output_uri, self.kind, self.gzip_level)))


def counts_document(shards: list[dict[str, Any]], location: str = "") -> dict[str, Any]:
    """contrastors' counts.json, each shard under its look-up key for a release read at ``location``."""
    ordered = sorted(shards, key=lambda s: s["key"])
    return {"count_per_file": {index_key(location, s["key"]): s["rows"] for s in ordered},
            "total_count": sum(s["rows"] for s in ordered)}


def _lengths(shard: dict[str, Any]) -> array:
    lengths = array("I")
    lengths.frombytes(shard["line_lengths"])
    return lengths


def offsets_document(shards: list[dict[str, Any]], location: str = "") -> dict[str, Any]:
    return {index_key(location, s["key"]): {str(line): list(span) for line, span in enumerate(line_offsets(_lengths(s)))}
            for s in sorted(shards, key=lambda s: s["key"])}


def write_offsets_gz(shards: list[dict[str, Any]], path: str, gzip_level: int, location: str = "") -> None:
    """offsets.json.gz streamed shard by shard and line by line (lines in numeric order), so a dataset of
    100M rows never becomes one dict in memory. Parses to the same object as ``offsets_document``."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=gzip_level,
                                                mtime=0) as compressed:
        compressed.write(b"{")
        for index, shard in enumerate(sorted(shards, key=lambda s: s["key"])):
            compressed.write((("," if index else "") + json.dumps(index_key(location, shard["key"])) + ":{"
                              ).encode("ascii"))
            spans = (f'"{line}":[{start},{end}]' for line, (start, end) in enumerate(line_offsets(_lengths(shard))))
            first = True
            for span in spans:
                compressed.write((span if first else "," + span).encode("ascii"))
                first = False
            compressed.write(b"}")
        compressed.write(b"}")


def json_bytes(obj: Any) -> bytes:
    """Pretty, sorted, ASCII JSON for small index and manifest files."""
    return (json.dumps(obj, sort_keys=True, ensure_ascii=True, indent=1) + "\n").encode("ascii")


def file_entry(key: str, data: bytes) -> dict[str, Any]:
    return {"key": key, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def negatives_per_row(negatives_counts: Iterable[int]) -> int | None:
    """The one number of negatives every row of a dataset has, or None when rows differ (never a triplet)."""
    counts = set(negatives_counts)
    return counts.pop() if len(counts) == 1 else None


class _WriteDatasetIndex(beam.DoFn):
    """All shard infos of one dataset -> counts.json and offsets.json.gz; yields the dataset's summary."""

    def __init__(self, output_uri: str, gzip_level: int, location: str):
        self.output_uri = output_uri
        self.gzip_level = gzip_level
        self.location = location
        self.store = None

    def setup(self):
        self.store = open_store(self.output_uri)

    def process(self, element):
        dataset, shard_infos = element
        shards = sorted(shard_infos, key=lambda s: s["key"])
        counts = json_bytes(counts_document(shards, self.location))
        counts_key = f"data/{dataset}/counts.json"
        offsets_key = f"data/{dataset}/offsets.json.gz"
        self.store.put_bytes(counts_key, counts, content_type=JSON)
        handle = tempfile.NamedTemporaryFile(prefix="offsets-", suffix=".json.gz", delete=False)
        handle.close()
        try:
            write_offsets_gz(shards, handle.name, self.gzip_level, self.location)
            offsets_entry = {"key": offsets_key, "bytes": os.path.getsize(handle.name),
                             "sha256": sha256_path(handle.name)}
            self.store.put_file(offsets_key, handle.name, content_type=JSON)
        finally:
            os.unlink(handle.name)
        yield {
            "dataset": dataset,
            "rows": sum(s["rows"] for s in shards),
            "shards": [{k: s[k] for k in ("key", "rows", "bytes", "sha256")} for s in shards],
            "negatives_per_row": negatives_per_row(n for s in shards for n in s["negatives_counts"]),
            "counts": file_entry(counts_key, counts),
            "offsets": offsets_entry,
        }


class WriteDatasetIndexes(beam.PTransform):
    """Shard infos -> each dataset's index files, keyed for a release read at ``location``."""

    def __init__(self, output_uri: str, gzip_level: int, location: str = ""):
        super().__init__()
        self.output_uri = output_uri
        self.gzip_level = gzip_level
        self.location = location

    def expand(self, shard_infos):
        return (shard_infos
                | "KeyByDataset" >> beam.Map(lambda info: (info["dataset"], info))
                | "GroupDataset" >> beam.GroupByKey()
                | "WriteIndex" >> beam.ParDo(_WriteDatasetIndex(self.output_uri, self.gzip_level, self.location)))


def summarize_rejects(shard_infos) -> Any:
    def summary(element):
        dataset, infos = element
        shards = sorted(infos, key=lambda s: s["key"])
        return {"dataset": dataset, "rows": sum(s["rows"] for s in shards),
                "shards": [{k: s[k] for k in ("key", "rows", "bytes", "sha256")} for s in shards]}

    return (shard_infos
            | "KeyRejectsByDataset" >> beam.Map(lambda info: (info["dataset"], info))
            | "GroupRejectDataset" >> beam.GroupByKey()
            | "RejectSummary" >> beam.Map(summary))
