"""Helpers shared by tests: run the build in-process, read a release the way a trainer does."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import uuid

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines import build
from pipelines.core.records import RAW_REJECT_CHARS, RejectPolicy

# Elements collected from DirectRunner pipelines that run in this process, by run token.
_COLLECTED: dict[str, list] = {}


def _collect(element, key):
    _COLLECTED.setdefault(key, []).append(element)


def run_read_transform(transform) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run a source's read transform on the DirectRunner; returns (pairs, rejects)."""
    token = uuid.uuid4().hex
    with TestPipeline() as pipeline:
        result = pipeline | "Read" >> transform
        result["pairs"] | "KeepPairs" >> beam.Map(_collect, token + "/pairs")
        result["rejects"] | "KeepRejects" >> beam.Map(_collect, token + "/rejects")
    return _COLLECTED.pop(token + "/pairs", []), _COLLECTED.pop(token + "/rejects", [])


def run_build(*args: str) -> int:
    """Run `python -m pipelines.build ARGS` in this process; returns the exit status."""
    try:
        return build.main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


def read_jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="ascii") as handle:
        return [json.loads(line) for line in handle]


def release_rows(release: Path, dataset: str) -> list[dict[str, Any]]:
    rows = []
    for shard in sorted((release / "data" / dataset).glob("shard-*.jsonl.gz")):
        rows.extend(read_jsonl_gz(shard))
    return rows


def release_rejects(release: Path, dataset: str | None = None) -> list[dict[str, Any]]:
    rows = []
    pattern = f"{dataset}/rejects-*.jsonl.gz" if dataset else "*/rejects-*.jsonl.gz"
    for shard in sorted((release / "rejects").glob(pattern)):
        rows.extend(read_jsonl_gz(shard))
    return rows


def load_like_contrastors(release: Path, dataset: str) -> list[dict[str, Any]]:
    """Read a dataset as contrastors' loader does: counts.json for sizes, offsets.json.gz to seek each line
    in the decompressed stream of its shard."""
    folder = release / "data" / dataset
    counts = json.loads((folder / "counts.json").read_text())
    with gzip.open(folder / "offsets.json.gz", "rt") as handle:
        offsets = json.load(handle)
    rows = []
    for key, count in counts["count_per_file"].items():
        with gzip.open(release / key, "rb") as stream:
            assert len(offsets[key]) == count
            for line_number in range(count):
                start, end = offsets[key][str(line_number)]
                stream.seek(start)
                rows.append(json.loads(stream.read(end - start)))
    assert counts["total_count"] == len(rows)
    return rows


# The reject policies tests hand to sources and stages (a build makes its one policy from release.reject_texts).
KEEP_TEXTS = RejectPolicy(keep_texts=True, raw_chars=RAW_REJECT_CHARS)
NO_TEXTS = RejectPolicy(keep_texts=False, raw_chars=RAW_REJECT_CHARS)
