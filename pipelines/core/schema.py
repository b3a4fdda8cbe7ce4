"""The release schema in one place: format version, object names, and the keys of a pair line and a reject line.

Written by ``pipelines.release`` (writer, manifest, card) and the graph's finalizer; read by ``verify``
(whose pydantic models check these keys line by line), ``explain`` and ``report``. Changing anything here is a
new release format: bump ``FORMAT_VERSION``.
"""

from __future__ import annotations

FORMAT_VERSION = "pair-curation/release-v1"

# Objects of a release, relative to its root. The manifest is written last: it commits the release.
MANIFEST_KEY = "manifest.json"
CARD_KEY = "README.md"
REPORT_KEY = "report.html"
DATA_PREFIX = "data/"
REJECTS_PREFIX = "rejects/"
# Per-run records (when, where, how: not reproducible), outside what the manifest vouches for.
RUN_RECORD_PREFIX = "runs/"


def data_shard_key(dataset: str, index: int) -> str:
    return f"{DATA_PREFIX}{dataset}/shard-{index:05d}.jsonl.gz"


def reject_shard_key(dataset: str, index: int) -> str:
    return f"{REJECTS_PREFIX}{dataset}/rejects-{index:05d}.jsonl.gz"


# Keys every line carries (more are allowed: scores columns, raw prefixes, texts when kept).
PAIR_LINE_KEYS = ("id", "query", "document", "negatives", "metadata", "dataset", "source", "provenance", "scores")
REJECT_LINE_KEYS = ("id", "dataset", "stage", "reason", "detail")
# What a reject carries only when the reject policy keeps texts (release.reject_texts).
REJECT_TEXT_KEYS = ("query", "document", "raw")
