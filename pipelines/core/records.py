"""The pair record and the reject record: the only thing stages exchange.

A pair travelling through the graph is a plain dict (cheap to pickle, easy to test):

    {"id", "dataset", "source", "query", "document", "negatives", "provenance", "scores"}

The release writer adds ``metadata`` (contrastors' objective columns) when it serialises the row. A reject is
a dict with ``id, dataset, source, stage, reason, detail`` and, unless configured away, the texts and
provenance of the dropped pair.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

from pipelines.core.schema import PAIR_LINE_KEYS, REJECT_LINE_KEYS

# The built-in stages in graph order, for the release readers (explain, report). The build and the graph know
# stages only through filters.registry (tests/test_stage_registry.py checks the two agree).
SKIPPABLE_STAGES = ("normalize", "exact_dedup", "minhash", "decontaminate", "consistency", "negatives")
ALL_STAGES = ("read",) + SKIPPABLE_STAGES

REQUIRED_RELEASE_KEYS = PAIR_LINE_KEYS
REQUIRED_REJECT_KEYS = REJECT_LINE_KEYS

_ID_HEX_CHARS = 32  # 128 bits: collisions are out of reach for billions of pairs


def content_hash(*parts: str) -> str:
    """A stable hex digest of text parts; the separator keeps ("ab", "c") apart from ("a", "bc")."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:_ID_HEX_CHARS]


def make_pair_id(dataset: str, record_ref: str, query: str, document: str) -> str:
    """The pair id: a hash of what the pair is made of, so every machine and runner gives the same id.

    The input record reference is part of it so that two input rows with equal texts stay two ids (exact
    dedup then decides, by rule, which one survives) and every reject names exactly one input row.
    """
    return content_hash(dataset, record_ref, query, document)


def new_pair(*, dataset: str, source: str, query: str, document: str, provenance: dict[str, Any],
             record_ref: str | None = None) -> dict[str, Any]:
    ref = record_ref if record_ref is not None else str(provenance.get("record", ""))
    return {
        "id": make_pair_id(dataset, ref, query, document),
        "dataset": dataset,
        "source": source,
        "query": query,
        "document": document,
        "negatives": [],
        "provenance": provenance,
        "scores": {},
    }


# Bounded: a 50 MB garbage line must not become a 50 MB reject line.
RAW_REJECT_CHARS = 2000


@dataclass(frozen=True)
class RejectPolicy:
    """What a reject may carry, decided once from the configuration (``release.reject_texts``) and handed to
    every source and stage. It has no default on purpose: code that forgets it fails with a TypeError instead
    of writing texts into rejects that were configured away."""

    keep_texts: bool
    raw_chars: int

    @classmethod
    def from_config(cls, release: Any) -> "RejectPolicy":
        """From the ``release`` section of the configuration."""
        return cls(keep_texts=bool(release.reject_texts), raw_chars=RAW_REJECT_CHARS)


def make_reject(pair: dict[str, Any], *, stage: str, reason: str, detail: dict[str, Any] | None = None,
                policy: RejectPolicy) -> dict[str, Any]:
    """A reject line for a dropped pair; without ``policy.keep_texts`` only ids and provenance."""
    reject = {
        "id": pair.get("id", ""),
        "dataset": pair.get("dataset", ""),
        "source": pair.get("source", ""),
        "stage": stage,
        "reason": reason,
        "detail": detail or {},
        "provenance": pair.get("provenance", {}),
    }
    if policy.keep_texts:
        reject["query"] = pair.get("query", "")
        reject["document"] = pair.get("document", "")
    return reject


def make_input_reject(*, dataset: str, source: str, provenance: dict[str, Any], reason: str,
                      detail: dict[str, Any] | None = None, raw: str | None = None,
                      policy: RejectPolicy) -> dict[str, Any]:
    """A reject for an input row that never became a pair (malformed, missing field, ...).

    Its id is a hash of where it came from (and its raw text when the policy keeps it), so it is as stable as
    a pair id. The raw text is kept only when ``policy.keep_texts``, and then only its first
    ``policy.raw_chars`` characters.
    """
    if not policy.keep_texts:
        raw = None
    ref = json.dumps(provenance, sort_keys=True, ensure_ascii=True)
    reject = {
        "id": content_hash("reject", dataset, ref, raw or ""),
        "dataset": dataset,
        "source": source,
        "stage": "read",
        "reason": reason,
        "detail": detail or {},
        "provenance": provenance,
    }
    if raw is not None:
        reject["raw"] = raw[:policy.raw_chars]
    return reject


def objective_metadata(has_negatives: bool) -> dict[str, Any]:
    """contrastors' objective columns: which column combinations a trainer may use."""
    objective: dict[str, Any] = {"self": [], "paired": [["query", "document"]]}
    if has_negatives:
        objective["triplet"] = [["query", "document", "negatives"]]
    return {"objective": objective}


# Provenance keys every published row has, with one type each; whatever else a source records (answer_url,
# tags, normalize, ...) goes to "extra" as a JSON object in a string. Different keys or types per dataset would
# stop Hugging Face `datasets` from loading every shard of a release in one call (it casts every file to the
# first file's Arrow schema, and a key missing or null there cannot take a value elsewhere).
RELEASE_PROVENANCE_KEYS = ("record", "input", "license", "url", "post_ids", "extra")


def release_provenance(provenance: dict[str, Any] | None) -> dict[str, Any]:
    provenance = dict(provenance or {})
    post_ids = provenance.pop("post_ids", None) or []
    release = {key: "" if provenance.get(key) is None else str(provenance.get(key))
               for key in ("record", "input", "license", "url")}
    for key in release:
        provenance.pop(key, None)
    release["post_ids"] = [str(post_id) for post_id in post_ids]
    release["extra"] = dumps_line(provenance)
    return release


def release_extra(row: dict[str, Any]) -> dict[str, Any]:
    """The source-specific provenance of a published row (``provenance.extra``), as a dict."""
    return json.loads(row["provenance"]["extra"])


def to_release_row(pair: dict[str, Any]) -> dict[str, Any]:
    """The published form of a pair: required keys, one provenance schema, objective metadata, distillation
    score columns."""
    row = dict(pair)
    row["provenance"] = release_provenance(row.get("provenance"))
    row.setdefault("negatives", [])
    row.setdefault("scores", {})
    row["metadata"] = objective_metadata(bool(row["negatives"]))
    scores = row["scores"]
    # contrastors reads optional document_score / negatives_scores for distillation.
    if "positive" in scores:
        row["document_score"] = scores["positive"]
    if scores.get("negatives"):
        row["negatives_scores"] = scores["negatives"]
    return row


def dumps_line(obj: Any) -> str:
    """One JSON line: ASCII-only (so character offsets equal byte offsets), keys sorted, no spaces."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def id_bucket(record_id: str, buckets: int) -> int:
    """Which of ``buckets`` a record belongs to, from its id hash (ids are already uniform hex)."""
    if buckets <= 1:
        return 0
    return int(record_id[:15], 16) % buckets


def missing_keys(row: dict[str, Any], keys: Iterable[str]) -> list[str]:
    return [key for key in keys if key not in row]
