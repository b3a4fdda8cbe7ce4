"""Per-dataset distributions over every row (not samples) for the audit report.

One mergeable CombineFn summarises kept pairs and rejects into fixed-bin histograms: the bins never depend on
the data or on arrival order, and the one sample it keeps (points for the positive-vs-negative scatter) is the
rows with the smallest id hash, so the same rows give the same summary on any runner. Per-row work is O(1)
(a bisect over fixed edges, a bounded heap push) and the output is a few kilobytes per dataset.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from typing import Any, Iterable

import apache_beam as beam

# Character-length bin edges: 0, then half-octaves 1, 2, 3, 4, 6, 8, 11, 16, ... up to 2**22 (~4M chars).
# Integers, so the bins are identical on every machine. Bin i holds lengths in [edges[i], edges[i+1]); the
# last bin is open-ended.
LENGTH_EDGES: tuple[int, ...] = tuple(sorted({0} | {int(round(2 ** (step / 2))) for step in range(0, 45)}))

# Cosine scores in [-1, 1] in 0.02-wide bins; values outside are clamped into the end bins.
SCORE_LOW, SCORE_BIN_WIDTH, SCORE_BINS = -1.0, 0.02, 100
# Ranks at or beyond this share the last bin, so a deep search depth cannot grow the summary.
RANK_CAP = 64
SCATTER_POINTS = 2000
# Distinct (input, licence) keys kept per dataset; inputs are files, so this is bounded by the manifest's
# input list in practice, and the cap keeps a hostile provenance field from growing the summary.
MAX_INPUT_KEYS = 10_000

REJECTED_STAGE_SCORE_KEYS = {"consistency": "score", "minhash": "similarity"}


def length_bin(length: int) -> int:
    return bisect.bisect_right(LENGTH_EDGES, length) - 1


def score_bin(score: float) -> int:
    index = math.floor((score - SCORE_LOW) / SCORE_BIN_WIDTH)
    return min(SCORE_BINS - 1, max(0, index))


def score_bin_edges() -> list[float]:
    return [round(SCORE_LOW + i * SCORE_BIN_WIDTH, 10) for i in range(SCORE_BINS + 1)]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _rank(value: Any, lower_bound: bool = False) -> str:
    """The rank bin label: "0".."63" for an exact rank; "N+" for "at least N" (a rank the search did not reach
    records only a lower bound), capped at "64+", which also holds unknown ranks."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= RANK_CAP:
        return f"{RANK_CAP}+"
    return f"{value}+" if lower_bound else str(value)


def _id_hash(record_id: str) -> int:
    # A hash of the id rather than the id itself: ids also pick shards (their leading digits), and the
    # scatter sample should not be tied to one shard's ids.
    return int.from_bytes(hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=7).digest(),
                          "big")


def _new_accumulator() -> dict[str, Any]:
    return {
        "kept": 0,
        "rejected": 0,
        "query_chars": [0] * len(LENGTH_EDGES),
        "document_chars": [0] * len(LENGTH_EDGES),
        "query_chars_sum": 0,
        "document_chars_sum": 0,
        "query_chars_max": 0,
        "document_chars_max": 0,
        "negatives_per_pair": {},
        "positive_kept": [0] * SCORE_BINS,
        "negative_kept": [0] * SCORE_BINS,
        "rank_kept": {},
        # Scores and ranks of the pairs a stage dropped (consistency: the positive's score and rank;
        # minhash: the Jaccard similarity to the survivor), stage -> histogram.
        "rejected_score": {},
        "rank_rejected": {},
        "inputs": {},
        # Max-heap (as negated hashes) of the SCATTER_POINTS smallest id hashes: [-hash, id, positive, hardest].
        "scatter": [],
    }


def _bump(counter: dict[str, int], key: str, by: int = 1) -> None:
    counter[key] = counter.get(key, 0) + by


def _add_input(accumulator: dict[str, Any], record: dict[str, Any], kept: bool) -> None:
    provenance = record.get("provenance")
    provenance = provenance if isinstance(provenance, dict) else {}
    key = f"{provenance.get('input', '')}\x00{provenance.get('license', '')}"
    inputs = accumulator["inputs"]
    if key not in inputs and len(inputs) >= MAX_INPUT_KEYS:
        key = "(other inputs)\x00"
    counts = inputs.setdefault(key, [0, 0])
    counts[0 if kept else 1] += 1


def _push_scatter(heap: list, item: list) -> None:
    if len(heap) < SCATTER_POINTS:
        heapq.heappush(heap, item)
    elif item > heap[0]:  # a smaller (hash, id) than the largest kept: replace it
        heapq.heapreplace(heap, item)


def add_kept(accumulator: dict[str, Any], pair: dict[str, Any]) -> None:
    accumulator["kept"] += 1
    for field in ("query", "document"):
        text = pair.get(field)
        length = len(text) if isinstance(text, str) else 0
        accumulator[f"{field}_chars"][length_bin(length)] += 1
        accumulator[f"{field}_chars_sum"] += length
        accumulator[f"{field}_chars_max"] = max(accumulator[f"{field}_chars_max"], length)
    negatives = pair.get("negatives") or []
    _bump(accumulator["negatives_per_pair"], str(len(negatives)))
    scores = pair.get("scores") if isinstance(pair.get("scores"), dict) else {}
    positive = _finite(scores.get("positive"))
    if positive is not None:
        accumulator["positive_kept"][score_bin(positive)] += 1
    if "rank" in scores:
        _bump(accumulator["rank_kept"], _rank(scores["rank"]))
    negative_scores = [score for score in map(_finite, scores.get("negatives") or []) if score is not None]
    for score in negative_scores:
        accumulator["negative_kept"][score_bin(score)] += 1
    if positive is not None and negative_scores:
        record_id = str(pair.get("id", ""))
        _push_scatter(accumulator["scatter"], [-_id_hash(record_id), _negate(record_id), positive,
                                               max(negative_scores)])
    _add_input(accumulator, pair, kept=True)


def _negate(record_id: str) -> tuple[int, ...]:
    # Ties on the hash (practically never) are broken by the smallest id; the heap keeps the largest item on
    # top, so the id is stored negated, code point by code point.
    return tuple(-ord(char) for char in record_id)


def add_rejected(accumulator: dict[str, Any], reject: dict[str, Any]) -> None:
    accumulator["rejected"] += 1
    stage = str(reject.get("stage", ""))
    detail = reject.get("detail") if isinstance(reject.get("detail"), dict) else {}
    score_key = REJECTED_STAGE_SCORE_KEYS.get(stage)
    if score_key is not None:
        score = _finite(detail.get(score_key))
        if score is not None:
            histogram = accumulator["rejected_score"].setdefault(stage, [0] * SCORE_BINS)
            histogram[score_bin(score)] += 1
    if stage == "consistency" and "rank" in detail:
        _bump(accumulator["rank_rejected"], _rank(detail["rank"], detail.get("rank_is_lower_bound") is True))
    _add_input(accumulator, reject, kept=False)


def _add_lists(left: list[int], right: list[int]) -> list[int]:
    return [a + b for a, b in zip(left, right)]


def merge(accumulators: Iterable[dict[str, Any]]) -> dict[str, Any]:
    merged = _new_accumulator()
    for accumulator in accumulators:
        for key in ("kept", "rejected", "query_chars_sum", "document_chars_sum"):
            merged[key] += accumulator[key]
        for key in ("query_chars_max", "document_chars_max"):
            merged[key] = max(merged[key], accumulator[key])
        for key in ("query_chars", "document_chars", "positive_kept", "negative_kept"):
            merged[key] = _add_lists(merged[key], accumulator[key])
        for key in ("negatives_per_pair", "rank_kept", "rank_rejected"):
            for label, count in accumulator[key].items():
                _bump(merged[key], label, count)
        for stage, histogram in accumulator["rejected_score"].items():
            merged["rejected_score"][stage] = _add_lists(merged["rejected_score"].get(stage, [0] * SCORE_BINS),
                                                         histogram)
        for key, (kept, rejected) in accumulator["inputs"].items():
            if key not in merged["inputs"] and len(merged["inputs"]) >= MAX_INPUT_KEYS:
                key = "(other inputs)\x00"
            counts = merged["inputs"].setdefault(key, [0, 0])
            counts[0] += kept
            counts[1] += rejected
        for item in accumulator["scatter"]:
            _push_scatter(merged["scatter"], item)
    return merged


def label_order(label: str) -> tuple[int, str]:
    """Numeric labels ("3", "3+", "10-19", "50+") by their leading number, then as text."""
    digits = ""
    for char in label:
        if not char.isdigit():
            break
        digits += char
    return (int(digits) if digits else 1 << 62, label)


def _sorted_counts(counter: dict[str, int]) -> dict[str, int]:
    return {label: counter[label] for label in sorted(counter, key=label_order)}


def extract(accumulator: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The summary: plain JSON types, keys sorted where order could vary, so it serialises identically."""
    scatter = sorted(accumulator["scatter"], reverse=True)  # smallest id hash first
    inputs = []
    for key in sorted(accumulator["inputs"]):
        name, _, licence = key.partition("\x00")
        kept, rejected = accumulator["inputs"][key]
        inputs.append({"input": name, "license": licence, "kept": kept, "rejected": rejected})
    return {
        "dataset": dataset,
        "kept": accumulator["kept"],
        "rejected": accumulator["rejected"],
        "length_edges": list(LENGTH_EDGES),
        "query_chars": accumulator["query_chars"],
        "document_chars": accumulator["document_chars"],
        "query_chars_sum": accumulator["query_chars_sum"],
        "document_chars_sum": accumulator["document_chars_sum"],
        "query_chars_max": accumulator["query_chars_max"],
        "document_chars_max": accumulator["document_chars_max"],
        "score_edges": score_bin_edges(),
        "positive_kept": accumulator["positive_kept"],
        "negative_kept": accumulator["negative_kept"],
        "rejected_score": {stage: accumulator["rejected_score"][stage]
                           for stage in sorted(accumulator["rejected_score"])},
        "rank_kept": _sorted_counts(accumulator["rank_kept"]),
        "rank_rejected": _sorted_counts(accumulator["rank_rejected"]),
        "negatives_per_pair": _sorted_counts(accumulator["negatives_per_pair"]),
        # Five decimals are plenty for a plot and keep the summary small.
        "scatter": [[round(positive, 5), round(hardest, 5)] for _, _, positive, hardest in scatter],
        "inputs": inputs,
    }


class DatasetStatsFn(beam.CombineFn):
    """Combines ("kept", pair) and ("rejected", reject) elements of one dataset into its summary dict."""

    def create_accumulator(self):
        return _new_accumulator()

    def add_input(self, accumulator, element):
        kind, record = element
        if kind == "kept":
            add_kept(accumulator, record)
        else:
            add_rejected(accumulator, record)
        return accumulator

    def merge_accumulators(self, accumulators):
        return merge(accumulators)

    def extract_output(self, accumulator):
        return accumulator  # the dataset name is attached by ReleaseStats, which knows the key


def summarize(dataset: str, kept: Iterable[dict[str, Any]] = (), rejected: Iterable[dict[str, Any]] = ()
              ) -> dict[str, Any]:
    """The same summary without Beam (tests, small tools)."""
    accumulator = _new_accumulator()
    for pair in kept:
        add_kept(accumulator, pair)
    for reject in rejected:
        add_rejected(accumulator, reject)
    return extract(accumulator, dataset)


class ReleaseStats(beam.PTransform):
    """(pairs, rejects) -> one summary dict per dataset (see :func:`extract`)."""

    def expand(self, pcolls):
        pairs, rejects = pcolls
        kept = pairs | "TagKept" >> beam.Map(lambda pair: (pair["dataset"], ("kept", pair)))
        dropped = rejects | "TagRejected" >> beam.Map(lambda reject: (reject["dataset"], ("rejected", reject)))
        return ((kept, dropped)
                | "FlattenForStats" >> beam.Flatten()
                | "CombineStats" >> beam.CombinePerKey(DatasetStatsFn())
                | "ExtractStats" >> beam.MapTuple(lambda dataset, accumulator: extract(accumulator, dataset)))
