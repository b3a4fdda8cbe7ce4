"""Hard-negative selection for one pair, from the ranked candidates of the block search.

The search itself (one FAISS index per block, one batched query pass) lives in ``filters.consistency``; this
module decides, for one query, which of the documents it retrieved become negatives:

1. Positives are never candidates: the pair's own document, every other document that is a positive of the
   same query (same normalized query text) in the block, and any document whose normalized text equals one
   of those positives.
2. The window: positions ``range_min`` .. ``range_max - 1`` of what remains, in rank order (score, then id).
3. Rules, in this order, each counted when it skips a candidate: ``equal_to_query`` (the normalized text is the
   query's), ``duplicate_text`` (equal after normalization to a better-ranked candidate), ``min_score``,
   ``max_score``, ``absolute_margin`` (must score below positive - margin), ``relative_margin`` (must score
   below positive - |positive| x margin: 0.05 keeps only negatives under 95% of a positive score).
4. ``num_negatives`` of the survivors: the best-ranked (``top``) or a seeded sample (``random``: the
   candidates with the smallest hash of (pair id, candidate id), a uniform choice that any machine and
   library version reproduces), reported in rank order.

Scores arrive rounded (see ``SCORE_DECIMALS``), and the rules compare the rounded values: what the release
records is exactly what was checked.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from pipelines.core.config import NegativesConfig
from pipelines.core.records import content_hash

SCORE_DECIMALS = 6
# How far a score from vectors that travelled as float16 can be from the model's float32 score: float16 keeps
# 11 significant bits, so a cosine of unit vectors moves by ~1e-5 typically and ~2e-3 at the very worst
# (every component's rounding aligned). The margin and max_score rules keep 1e-3 to spare, so they hold for
# the model's own scores, not only for the recorded ones.
SCORE_SLACK = {"float16": 1e-3, "float32": 0.0}
# How far a back end's scores can be from full-precision torch's, added to the above for the same reason:
# bfloat16 autocast moved scores by up to 3.5e-3 (mean 4e-4) over 2 million text pairs of the cardano sample.
# (onnx-int8 moves them up to ~0.08: no slack covers that; it is documented as moving decisions.)
BACKEND_SCORE_SLACK = {"torch-bf16": 4e-3}


def score_slack(vector_dtype: str, backend: str) -> float:
    """The margin the negatives' upper bounds keep for vectors of this shuffle dtype from this back end."""
    return SCORE_SLACK[vector_dtype] + BACKEND_SCORE_SLACK.get(backend, 0.0)

RULES = ("same_query_positive", "equal_to_query", "duplicate_text", "min_score", "max_score", "absolute_margin",
         "relative_margin")


def round_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as recorded: 6 decimals (so output is stable), -inf kept."""
    return np.round(np.asarray(scores, dtype=np.float64), SCORE_DECIMALS)


def round_score(score: float) -> float:
    return float(round_scores(np.float64(score)))


def comparison_text(text: str) -> str:
    """The form in which two texts count as equal: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def comparison_key(text: str) -> str:
    return content_hash("comparison", comparison_text(text))


class Candidate(NamedTuple):
    """One retrieved document: its id (the document's text key), rounded score, comparison key."""

    key: str
    score: float
    norm: str


@dataclass
class Selection:
    keys: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    # Candidates that passed every rule (before taking num_negatives of them).
    eligible: int = 0
    skipped_by_rule: dict[str, int] = field(default_factory=dict)


def _skip_reason(candidate: Candidate, positive: float, query_norm: str, seen_norms: set[str],
                 config: NegativesConfig, slack: float) -> str | None:
    if candidate.norm == query_norm:
        return "equal_to_query"
    if candidate.norm in seen_norms:
        return "duplicate_text"
    if config.min_score is not None and candidate.score < config.min_score:
        return "min_score"
    # The upper bounds hold with ``slack`` to spare: scores from compact (float16) vectors are that close
    # to the model's own, and the bounds must hold for the model's own scores.
    score = candidate.score + slack
    if config.max_score is not None and score > config.max_score:
        return "max_score"
    if config.absolute_margin is not None and score >= positive - config.absolute_margin:
        return "absolute_margin"
    if config.relative_margin is not None and score >= positive - abs(positive) * config.relative_margin:
        return "relative_margin"
    return None


def sample_order(pair_id: str, key: str) -> str:
    """The seeded order of ``random`` sampling: a hash of the pair's id and the candidate's id."""
    return content_hash("negative-sample", pair_id, key)


def select_negatives(candidates: Sequence[Candidate], *, pair_id: str, own_key: str, positive: float,
                     query_norm: str, positive_keys: Iterable[str], positive_norms: Iterable[str],
                     config: NegativesConfig, slack: float = 0.0) -> Selection:
    """Negatives for one pair. ``candidates`` in rank order (best first); ``positive`` is the rounded score of
    the pair's own document; ``positive_keys`` / ``positive_norms`` are the documents (ids, comparison keys)
    that are positives of this query anywhere in the block, the pair's own included. ``slack``: how far the
    scores may be from the model's own (see ``score_slack``)."""
    positive_keys = set(positive_keys) | {own_key}
    positive_norms = set(positive_norms)
    skipped = {rule: 0 for rule in RULES}
    ranked = []
    for candidate in candidates:
        if candidate.key in positive_keys or candidate.norm in positive_norms:
            if candidate.key != own_key:
                skipped["same_query_positive"] += 1
            continue
        ranked.append(candidate)
    eligible: list[Candidate] = []
    seen_norms: set[str] = set()
    for candidate in ranked[config.range_min:config.range_max]:
        reason = _skip_reason(candidate, positive, query_norm, seen_norms, config, slack)
        seen_norms.add(candidate.norm)
        if reason:
            skipped[reason] += 1
            continue
        eligible.append(candidate)
    if config.sampling == "random" and len(eligible) > config.num_negatives:
        chosen_keys = set(sorted((c.key for c in eligible), key=lambda key: sample_order(pair_id, key))
                          [:config.num_negatives])
        chosen = [c for c in eligible if c.key in chosen_keys]
    else:
        chosen = eligible[:config.num_negatives]
    return Selection(keys=[c.key for c in chosen], scores=[c.score for c in chosen], eligible=len(eligible),
                     skipped_by_rule={rule: n for rule, n in skipped.items() if n})


def shortage(found: int, config: NegativesConfig) -> bool:
    """Fewer than ``num_negatives`` found: the pair cannot join a triplet dataset (whose rows must all bring
    the same number of documents), so it is rejected."""
    return found < config.num_negatives
