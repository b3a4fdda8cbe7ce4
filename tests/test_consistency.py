"""The `consistency` filter and `negatives` mining: block decisions on hand-made vectors, a brute-force numpy
check of the top-k decisions, and the Beam stages on real Quora duplicates with the real model."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline

from filters.consistency import BlockMember, EmbeddingStages, apply_decision, decide_block
from pipelines.core.config import ConsistencyConfig, EmbeddingConfig, NegativesConfig
from filters.embedding import encode_texts
from filters.negatives_kernel import comparison_text, score_slack
from pipelines.core.records import new_pair, to_release_row
from tests.helpers import KEEP_TEXTS, NO_TEXTS

# ---------------------------------------------------------------------------------------------------------
# Plain block decisions


def member(pair_id, query, document, query_vector, document_vector, query_norm=None, document_norm=None):
    """A block member whose text keys are the given names (and comparison keys the same, unless given)."""
    return BlockMember(pair_id=pair_id, query_key=query, query_norm=query_norm or query, document_key=document,
                       document_norm=document_norm or document,
                       query_vector=np.asarray(query_vector, dtype=np.float32),
                       document_vector=np.asarray(document_vector, dtype=np.float32))


def by_id(result):
    return {decision.pair_id: decision for decision in result.decisions}


def test_a_document_shared_by_two_pairs_is_a_hit_for_each():
    members = [
        member("p1", "q1", "answer", [1.0, 0.0, 0.0], [1.0, 0.1, 0.0]),
        member("p2", "q2", "answer", [0.9, 0.2, 0.0], [1.0, 0.1, 0.0]),
        member("p3", "q3", "other", [0.0, 1.0, 0.0], [0.0, 1.0, 0.1]),
    ]
    decisions = by_id(decide_block(members, ConsistencyConfig(top_k=1), None))
    assert decisions["p1"].kept and decisions["p1"].rank == 0
    assert decisions["p2"].kept and decisions["p2"].rank == 0
    assert decide_block(members, ConsistencyConfig(top_k=1), None).documents == 2


def test_other_positives_of_the_same_query_do_not_outrank_and_are_not_negatives():
    # Two pairs share the query "q" (same normalized text, different embedded keys); B suits q better than A.
    members = [
        member("p1", "q-a", "A", [1.0, 0.0, 0.0], [0.8, 0.6, 0.0], query_norm="q"),
        member("p2", "q-b", "B", [1.0, 0.0, 0.0], [0.99, 0.1, 0.0], query_norm="q"),
        member("p3", "r", "C", [0.0, 0.0, 1.0], [0.5, 0.0, 0.9]),
        member("p4", "s", "D", [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]),
    ]
    negatives = NegativesConfig(relative_margin=None, num_negatives=3)
    decisions = by_id(decide_block(members, ConsistencyConfig(top_k=1), negatives))
    assert decisions["p1"].kept and decisions["p1"].rank == 0
    assert "B" not in decisions["p1"].negatives.keys
    assert decisions["p1"].negatives.keys == ["C", "D"]
    assert decisions["p1"].negatives.skipped_by_rule == {"same_query_positive": 1}


def test_a_dropped_pair_records_rank_score_and_who_outranked_it():
    members = [
        member("p1", "q1", "A", [1.0, 0.0], [0.6, 0.8]),
        member("p2", "q2", "B", [0.0, 1.0], [0.9, 0.436]),
        member("p3", "q3", "C", [0.0, -1.0], [0.8, -0.6]),
        member("p4", "q4", "D", [-1.0, 0.0], [-1.0, 0.0]),
    ]
    decisions = by_id(decide_block(members, ConsistencyConfig(top_k=2), None))
    dropped = decisions["p1"]
    assert not dropped.kept
    assert dropped.rank == 2 and not dropped.rank_is_lower_bound
    assert dropped.positive == pytest.approx(0.6, abs=1e-6)
    # The documents ahead, best first, named by the pair that holds them, with their scores.
    assert dropped.outranked_by == ["p2", "p3"]
    assert dropped.outranked_scores == pytest.approx([0.9 / np.hypot(0.9, 0.436), 0.8], abs=1e-6)
    assert dropped.outranked_scores[0] > dropped.outranked_scores[1] > dropped.positive


def test_rank_beyond_the_search_depth_is_a_lower_bound():
    rng = np.random.default_rng(7)
    members = [member(f"p{i:03d}", f"q{i}", f"d{i}", rng.normal(size=8), rng.normal(size=8)) for i in range(200)]
    target = rng.normal(size=8)
    members.append(member("z-target", "qz", "dz", target, -target))  # its document is the worst there is
    decisions = by_id(decide_block(members, ConsistencyConfig(search_depth=10), None))
    worst = decisions["z-target"]
    assert not worst.kept
    assert worst.rank_is_lower_bound and worst.rank == 10
    assert worst.positive == pytest.approx(-1.0, abs=1e-6)


def brute_force(members, top_k):
    """The top-k rule computed directly: every document scored against every query in float64."""
    documents = sorted({m.document_key for m in members})
    vectors = {}
    norms = {}
    for m in members:
        vectors.setdefault(m.document_key, m.document_vector)
        norms.setdefault(m.document_key, m.document_norm)
    matrix = np.stack([vectors[key] for key in documents]).astype(np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    positives: dict[str, set[str]] = {}
    for m in members:
        positives.setdefault(m.query_norm, set()).add(m.document_key)
    out = {}
    for m in members:
        query = m.query_vector.astype(np.float64) / np.linalg.norm(m.query_vector)
        scores = matrix @ query
        own = documents.index(m.document_key)
        excluded_norms = {norms[key] for key in positives[m.query_norm]}
        ahead = [j for j, key in enumerate(documents)
                 if key not in positives[m.query_norm] and norms[key] not in excluded_norms
                 and (scores[j] > scores[own] or (scores[j] == scores[own] and j < own))]
        out[m.pair_id] = (len(ahead) < top_k, len(ahead), scores[own])
    return out


def clustered_block(seed=3, pairs=400, dimension=24):
    """Pairs whose query is its document plus noise of varying size, so some fail the top-k rule; a few
    documents are shared, and one query has three positives."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, dimension))
    members = []
    for i in range(pairs):
        document = centers[i % 12] + rng.normal(scale=0.7, size=dimension)
        query = document + rng.normal(scale=rng.uniform(0.1, 2.0), size=dimension)
        members.append(member(f"pair{i:04d}", f"q{i}", f"d{i}", query, document))
    for i in range(10):  # the same answer to a second question
        shared = members[i]
        members.append(member(f"shared{i:02d}", f"qs{i}", shared.document_key,
                              shared.document_vector + rng.normal(scale=0.5, size=dimension),
                              shared.document_vector))
    for i in range(3):  # one question with three answers
        members.append(member(f"multi{i}", "qm", f"dm{i}", centers[0], centers[0] + rng.normal(size=dimension)))
    return members


@pytest.mark.parametrize("search_depth", [64, 500])
def test_top_k_decisions_equal_a_brute_force_numpy_search(search_depth):
    members = clustered_block()
    expected = brute_force(members, top_k=2)
    result = decide_block(members, ConsistencyConfig(top_k=2, search_depth=search_depth), None)
    assert len(result.decisions) == len(members)
    kept = sum(decision.kept for decision in result.decisions)
    assert 0 < kept < len(members)  # the data exercises both outcomes
    for decision in result.decisions:
        keep, rank, score = expected[decision.pair_id]
        assert decision.kept == keep, decision.pair_id
        assert decision.positive == pytest.approx(score, abs=1e-6)
        if decision.rank_is_lower_bound:
            assert search_depth < len(members) and decision.rank <= rank
        else:
            assert decision.rank == rank, decision.pair_id


def test_ivf_index_beyond_the_size_limit_gives_the_same_decisions_when_all_cells_are_probed():
    members = clustered_block(seed=5, pairs=300)
    config = ConsistencyConfig(top_k=2, ivf_min_size=100, ivf_nlist=4, ivf_nprobe=4)
    result = decide_block(members, config, None)
    assert result.index == "ivf"
    expected = brute_force(members, top_k=2)
    assert {d.pair_id: d.kept for d in result.decisions} == {key: value[0] for key, value in expected.items()}


def test_decisions_do_not_depend_on_member_order():
    members = clustered_block(seed=11, pairs=150)
    shuffled = list(members)
    random.Random(1).shuffle(shuffled)
    negatives = NegativesConfig(num_negatives=5, sampling="random")
    first = decide_block(members, ConsistencyConfig(), negatives).decisions
    second = decide_block(shuffled, ConsistencyConfig(), negatives).decisions
    assert first == second


def decision(**changes):
    record = {"kept": True, "positive": 0.8, "rank": 0, "rank_is_lower_bound": False, "outranked_by": [],
              "outranked_scores": [], "top_k": 2, "block": "d/0", "negative_scores": [0.5, 0.4], "eligible": 2,
              "skipped_by_rule": {"relative_margin": 3}}
    record.update(changes)
    return record


PAIR = new_pair(dataset="d", source="s", query="a question", document="its answer", provenance={"record": "1"})


def test_a_kept_pair_gets_its_scores_and_negatives():
    kept, reject, summary = apply_decision(PAIR, decision(), {0: "first", 1: "second"}, True,
                                           NegativesConfig(num_negatives=2), policy=KEEP_TEXTS)
    assert reject is None
    assert kept["negatives"] == ["first", "second"]
    assert kept["scores"] == {"positive": 0.8, "rank": 0, "negatives": [0.5, 0.4]}
    assert summary["kept"] == 1 and summary["short"] == 0 and summary["skipped:relative_margin"] == 3
    row = to_release_row(kept)
    assert row["document_score"] == 0.8 and row["negatives_scores"] == [0.5, 0.4]
    assert row["metadata"]["objective"]["triplet"] == [["query", "document", "negatives"]]


def test_a_pair_short_of_num_negatives_is_a_negatives_reject():
    # Triplet safety: a row with fewer negatives than the rest would make contrastors' loss pair a query with
    # the wrong documents, so it never reaches a triplet dataset.
    none_found = decision(negative_scores=[], eligible=0)
    kept, reject, summary = apply_decision(PAIR, decision(), {0: "first", 1: "second"}, True,
                                           NegativesConfig(num_negatives=3), KEEP_TEXTS)
    assert kept is None and reject["detail"] == {**reject["detail"], "found": 2, "num_negatives": 3}
    kept, reject, summary = apply_decision(PAIR, none_found, {}, True, NegativesConfig(), NO_TEXTS)
    assert kept is None
    assert (reject["stage"], reject["reason"]) == ("negatives", "too_few_negatives")
    assert reject["detail"]["found"] == 0 and reject["detail"]["num_negatives"] == 7
    assert "query" not in reject  # NO_TEXTS
    assert summary["dropped:negatives:too_few_negatives"] == 1


def test_a_pair_without_usable_texts_is_rejected_by_the_first_active_stage():
    _, reject, _ = apply_decision(PAIR, None, {}, False, NegativesConfig(), KEEP_TEXTS)
    assert (reject["stage"], reject["reason"]) == ("negatives", "invalid_text")
    _, reject, _ = apply_decision(PAIR, None, {}, True, None, KEEP_TEXTS)
    assert reject["stage"] == "consistency"


# ---------------------------------------------------------------------------------------------------------
# The Beam stages on real Quora duplicates with the real model

QUORA_PAIRS = 300
POOL_SIZE = 150  # two blocks


def quora_pairs(shared_data: Path) -> list[dict]:
    path = shared_data / "quora" / "mini_quora_duplicate_questions.tsv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle, delimiter="\t") if row["is_duplicate"] == "1"]
    pairs = [new_pair(dataset="quora_duplicates", source="quora", query=row["question1"].strip(),
                      document=row["question2"].strip(), provenance={"record": f"quora/{row['id']}"})
             for row in rows[:QUORA_PAIRS]]
    return pairs


def _write(pcoll, label: str, path: Path):
    return (pcoll
            | f"{label}Json" >> beam.Map(lambda item: json.dumps(item, sort_keys=True))
            | f"{label}Write" >> beam.io.WriteToText(str(path), shard_name_template=""))


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


EMBEDDING = EmbeddingConfig()
CONSISTENCY = ConsistencyConfig(pool_size=POOL_SIZE)
NEGATIVES = NegativesConfig()


@pytest.fixture(scope="module")
def quora_run(shared_data, tmp_path_factory):
    """One pipeline: the stages on the pairs, on the same pairs shuffled, and with both stages' filters off."""
    out = tmp_path_factory.mktemp("quora_stages")
    pairs = quora_pairs(shared_data)
    shuffled = list(pairs)
    random.Random(42).shuffle(shuffled)
    with test_pipeline.TestPipeline() as pipeline:
        runs = {
            "main": (pipeline | "Pairs" >> beam.Create(pairs)
                     | "Stages" >> EmbeddingStages(EMBEDDING, CONSISTENCY, NEGATIVES, KEEP_TEXTS)),
            "shuffled": (pipeline | "Shuffled" >> beam.Create(shuffled)
                         | "StagesShuffled" >> EmbeddingStages(EMBEDDING, CONSISTENCY, NEGATIVES, KEEP_TEXTS)),
            "scores_only": (pipeline | "PairsAgain" >> beam.Create(pairs)
                            | "ScoresOnly" >> EmbeddingStages(EMBEDDING, None, None, NO_TEXTS)),
        }
        for run, outputs in runs.items():
            for name in ("pairs", "rejects", "report"):
                _write(outputs[name], f"{run}_{name}", out / f"{run}_{name}.jsonl")
    result = {run: {name: _read(out / f"{run}_{name}.jsonl") for name in ("pairs", "rejects", "report")}
              for run in runs}
    result["input"] = pairs
    return result


def test_every_pair_is_kept_or_rejected_with_its_reason(quora_run):
    main = quora_run["main"]
    ids_in = {pair["id"] for pair in quora_run["input"]}
    kept = {pair["id"] for pair in main["pairs"]}
    rejected = {reject["id"] for reject in main["rejects"]}
    assert kept | rejected == ids_in and not kept & rejected
    assert rejected, "a few Quora duplicates fail the top-2 rule with MiniLM"
    assert {(r["stage"], r["reason"]) for r in main["rejects"]} == {("consistency", "not_in_top_k")}
    [report] = main["report"]
    assert report["stage"] == "consistency" and report["blocks"] == 2
    assert report["kept"] == len(kept) and report["dropped"] == len(rejected) and report["pairs_in"] == len(ids_in)
    assert report["model"]["weights_sha256"] and report["model"]["dimension"] == 384
    assert report["score_slack"] == SLACK and report["model"]["backend"] == EMBEDDING.backend
    assert report["negatives"]["pairs_with_negatives"] + report["negatives"]["short"] >= len(kept) - \
        report["negatives"]["per_pair_histogram"].get("0", 0)


# Recorded scores are the full-precision model's cosine to within the slack the negatives' bounds keep: 1e-3
# for float16 shuffles, plus 4e-3 where the back end computes in bfloat16.
SLACK = score_slack(EMBEDDING.shuffle_dtype, EMBEDDING.backend)
FULL_PRECISION = EmbeddingConfig(backend="torch")


def test_positive_scores_are_the_models_cosine_similarity(quora_run):
    kept = quora_run["main"]["pairs"]
    queries = encode_texts([pair["query"] for pair in kept], FULL_PRECISION)
    documents = encode_texts([pair["document"] for pair in kept], FULL_PRECISION)
    cosine = (queries * documents).sum(axis=1)
    recorded = np.array([pair["scores"]["positive"] for pair in kept])
    assert np.abs(cosine - recorded).max() < SLACK
    assert all(pair["scores"]["rank"] < CONSISTENCY.top_k for pair in kept)


def test_negatives_score_below_95_percent_of_the_positive_and_are_real_documents(quora_run):
    kept = quora_run["main"]["pairs"]
    documents = {pair["document"] for pair in quora_run["input"]}
    with_negatives = [pair for pair in kept if pair["negatives"]]
    assert len(with_negatives) > 0.9 * len(kept)
    for pair in kept:
        scores = pair["scores"]
        assert len(pair["negatives"]) == len(scores["negatives"]) <= NEGATIVES.num_negatives
        assert all(score < 0.95 * scores["positive"] for score in scores["negatives"])
        assert scores["negatives"] == sorted(scores["negatives"], reverse=True)
        own = {comparison_text(pair["document"]), comparison_text(pair["query"])}
        for negative in pair["negatives"]:
            assert negative in documents
            assert comparison_text(negative) not in own
    # Negative scores are the full-precision model's cosine too, and the 95% rule holds for those.
    sample = with_negatives[:20]
    queries = encode_texts([pair["query"] for pair in sample], FULL_PRECISION)
    positives = encode_texts([pair["document"] for pair in sample], FULL_PRECISION)
    negatives = encode_texts([text for pair in sample for text in pair["negatives"]], FULL_PRECISION)
    start = 0
    for query, positive, pair in zip(queries, positives, sample):
        vectors = negatives[start:start + len(pair["negatives"])]
        start += len(pair["negatives"])
        assert np.abs(vectors @ query - np.array(pair["scores"]["negatives"])).max() < SLACK
        assert (vectors @ query < 0.95 * float(positive @ query)).all()


def test_rejects_carry_rank_score_and_the_ids_that_outranked_them(quora_run):
    input_ids = {pair["id"] for pair in quora_run["input"]}
    rejects = quora_run["main"]["rejects"]
    for reject in rejects:
        detail = reject["detail"]
        assert detail["rank"] >= CONSISTENCY.top_k and detail["top_k"] == CONSISTENCY.top_k
        assert reject["query"] and reject["document"]
        outranked = detail["outranked_by"]
        assert len(outranked) >= CONSISTENCY.top_k and set(outranked) <= input_ids
        assert reject["id"] not in outranked
        assert all(score >= detail["score"] for score in detail["outranked_scores"])
    queries = encode_texts([reject["query"] for reject in rejects], FULL_PRECISION)
    documents = encode_texts([reject["document"] for reject in rejects], FULL_PRECISION)
    recorded = np.array([reject["detail"]["score"] for reject in rejects])
    assert np.abs((queries * documents).sum(axis=1) - recorded).max() < SLACK


def test_output_does_not_depend_on_input_order(quora_run):
    def canonical(rows):
        return sorted(json.dumps(row, sort_keys=True) for row in rows)

    for name in ("pairs", "rejects", "report"):
        assert canonical(quora_run["main"][name]) == canonical(quora_run["shuffled"][name])


def test_without_the_filter_every_pair_is_kept_with_its_score_and_rank(quora_run):
    scores_only = quora_run["scores_only"]
    assert not scores_only["rejects"]
    assert len(scores_only["pairs"]) == len(quora_run["input"])
    main_scores = {pair["id"]: pair["scores"] for pair in quora_run["main"]["pairs"]}
    for pair in scores_only["pairs"]:
        assert pair["negatives"] == [] and pair["scores"]["negatives"] == []
        assert isinstance(pair["scores"]["rank"], int)
        if pair["id"] in main_scores:  # same blocks, same scores
            assert pair["scores"]["positive"] == main_scores[pair["id"]]["positive"]
    [report] = scores_only["report"]
    assert report["stage"] == "consistency" or report["stages"] == []
    assert "negatives" not in report and report["dropped"] == 0


def test_output_is_a_contrastors_triplet_dataset_that_sentence_transformers_can_train_on(quora_run, tmp_path):
    from datasets import load_dataset
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    from filters.embedding import get_encoder

    path = tmp_path / "shard-00000.jsonl"
    rows = [to_release_row(pair) for pair in quora_run["main"]["pairs"] if pair["negatives"]]
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")

    contrastors = load_dataset("json", data_files=str(path), split="train")
    for column in ("query", "document", "negatives", "document_score", "negatives_scores", "metadata"):
        assert column in contrastors.column_names
    first = contrastors[0]
    assert first["metadata"]["objective"]["triplet"] == [["query", "document", "negatives"]]
    assert first["document_score"] == rows[0]["scores"]["positive"]
    assert first["negatives_scores"] == rows[0]["scores"]["negatives"]

    # sentence-transformers' triplet layout: one (anchor, positive, negative) row per mined negative.
    triplets = contrastors.map(
        lambda batch: {"anchor": [q for q, negs in zip(batch["query"], batch["negatives"]) for _ in negs],
                       "positive": [d for d, negs in zip(batch["document"], batch["negatives"]) for _ in negs],
                       "negative": [n for negs in batch["negatives"] for n in negs]},
        batched=True, remove_columns=contrastors.column_names)
    assert triplets.column_names == ["anchor", "positive", "negative"]
    assert len(triplets) == sum(len(row["negatives"]) for row in rows)
    model = get_encoder(EMBEDDING.model_copy(update={"backend": "torch"})).model  # sentence-transformers
    collate = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
    batch = collate([triplets[i] for i in range(8)])
    for column in ("anchor", "positive", "negative"):
        assert batch[f"{column}_input_ids"].shape[0] == 8
