"""Negative selection for one pair (filters.negatives_kernel), on hand-made candidate lists."""

from __future__ import annotations

import pytest

from pipelines.core.config import NegativesConfig
from filters.negatives_kernel import (Candidate, comparison_key, comparison_text, select_negatives, shortage)


def ranked(*items: tuple[str, float]) -> list[Candidate]:
    """Candidates in the given (rank) order; each id's comparison key is its own unless given as 'id=norm'."""
    out = []
    for name, score in items:
        key, _, norm = name.partition("=")
        out.append(Candidate(key, score, norm or key))
    return out


def select(candidates, config=None, *, positive=0.9, own="own", query_norm="q", positive_keys=(),
           positive_norms=("own",), pair_id="pair-1"):
    return select_negatives(candidates, pair_id=pair_id, own_key=own, positive=positive, query_norm=query_norm,
                            positive_keys=positive_keys, positive_norms=positive_norms,
                            config=config or NegativesConfig(relative_margin=None))


def test_own_positive_and_other_positives_of_the_query_are_never_negatives():
    candidates = ranked(("own", 0.9), ("other_positive", 0.8), ("copy=own", 0.79), ("a", 0.5), ("b", 0.4))
    result = select(candidates, positive_keys=("own", "other_positive"), positive_norms=("own", "other_positive"))
    assert result.keys == ["a", "b"]
    assert result.scores == [0.5, 0.4]
    # The own document is not counted as skipped; the other positive and the copy of the own text are.
    assert result.skipped_by_rule == {"same_query_positive": 2}


def test_text_equal_to_query_and_duplicate_texts_are_skipped():
    candidates = ranked(("a=query-text", 0.6), ("b", 0.5), ("c=b", 0.49), ("d", 0.3))
    result = select(candidates, query_norm="query-text")
    assert result.keys == ["b", "d"]
    assert result.skipped_by_rule == {"equal_to_query": 1, "duplicate_text": 1}


def test_relative_margin_keeps_only_scores_below_95_percent_of_the_positive():
    positive = 0.8
    candidates = ranked(("a", 0.79), ("b", 0.76), ("c", 0.759999), ("d", 0.5))
    result = select(candidates, NegativesConfig(relative_margin=0.05), positive=positive)
    assert result.keys == ["c", "d"]  # 0.76 == 0.95 * 0.8 is not below it
    assert all(score < 0.95 * positive for score in result.scores)
    assert result.skipped_by_rule == {"relative_margin": 2}


def test_relative_margin_with_a_negative_positive_score_stays_below_it():
    # positive - |positive| x margin = -0.3: the threshold is below a negative positive score too.
    result = select(ranked(("a", -0.1), ("b", -0.25), ("c", -0.35)), NegativesConfig(relative_margin=0.5),
                    positive=-0.2)
    assert result.keys == ["c"]


def test_slack_keeps_the_margin_for_scores_of_compact_vectors():
    # 0.95 x 0.8 = 0.76: a recorded 0.7595 is below it, but not by the 1e-3 that float16 vectors may be off.
    candidates = ranked(("a", 0.7595), ("b", 0.7585))
    config = NegativesConfig(relative_margin=0.05)
    assert select(candidates, config, positive=0.8).keys == ["a", "b"]
    assert select_negatives(candidates, pair_id="p", own_key="own", positive=0.8, query_norm="q",
                            positive_keys=(), positive_norms=(), config=config, slack=1e-3).keys == ["b"]


def test_absolute_margin_max_score_and_min_score():
    candidates = ranked(("a", 0.85), ("b", 0.7), ("c", 0.6), ("d", 0.2), ("e", 0.05))
    config = NegativesConfig(relative_margin=None, absolute_margin=0.1, max_score=0.65, min_score=0.1)
    result = select(candidates, config, positive=0.9)
    assert result.keys == ["c", "d"]
    # Rules are checked in a fixed order: max_score catches "a" and "b" before the margin would.
    assert result.skipped_by_rule == {"max_score": 2, "min_score": 1}
    margin_only = select(candidates, NegativesConfig(relative_margin=None, absolute_margin=0.1), positive=0.9)
    assert margin_only.skipped_by_rule == {"absolute_margin": 1}


def test_range_counts_positions_after_positives_are_removed():
    candidates = ranked(("own", 0.95), ("a", 0.6), ("b", 0.5), ("c", 0.4), ("d", 0.3), ("e", 0.2))
    result = select(candidates, NegativesConfig(relative_margin=None, range_min=1, range_max=3))
    assert result.keys == ["b", "c"]


def test_top_sampling_takes_the_best_ranked():
    candidates = ranked(*[(f"n{i:02d}", 0.8 - i * 0.01) for i in range(20)])
    result = select(candidates, NegativesConfig(relative_margin=None, num_negatives=7))
    assert result.keys == [f"n{i:02d}" for i in range(7)]
    assert result.eligible == 20


def test_random_sampling_is_seeded_by_the_pair_id_and_reported_in_rank_order():
    candidates = ranked(*[(f"n{i:02d}", 0.8 - i * 0.01) for i in range(30)])
    config = NegativesConfig(relative_margin=None, num_negatives=5, sampling="random")
    first = select(candidates, config, pair_id="pair-a")
    again = select(list(candidates), config, pair_id="pair-a")
    other = select(candidates, config, pair_id="pair-b")
    assert first.keys == again.keys
    assert len(first.keys) == 5 and len(set(first.keys)) == 5
    assert first.keys != other.keys
    assert first.keys != [f"n{i:02d}" for i in range(5)]
    assert first.scores == sorted(first.scores, reverse=True)


def test_a_pair_short_of_num_negatives_is_short():
    assert shortage(3, NegativesConfig(num_negatives=7))
    assert shortage(0, NegativesConfig(num_negatives=7))
    assert not shortage(7, NegativesConfig(num_negatives=7))
    assert not shortage(2, NegativesConfig(num_negatives=2))


def test_few_candidates_give_fewer_negatives():
    result = select(ranked(("own", 0.9), ("a", 0.3)), NegativesConfig(relative_margin=0.05, num_negatives=7))
    assert result.keys == ["a"]
    assert result.eligible == 1


@pytest.mark.parametrize("left, right", [("Hello  World", "hello world"), ("ﬁne\u00a0day", "fine day"),
                                         ("CAFÉ", "café")])
def test_comparison_text_ignores_case_width_and_spacing(left, right):
    assert comparison_text(left) == comparison_text(right)
    assert comparison_key(left) == comparison_key(right)
    assert comparison_key(left) != comparison_key(left + " again")
