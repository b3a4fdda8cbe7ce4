"""The `consistency` filter and `negatives` mining: one embedding pass, one batched search per block.

Rule (Nomic Embed, after E5's CCPairs): pairs are put in blocks of up to ``pool_size`` by id hash (per
dataset); each block indexes its documents once; a pair is kept when its own document is among its query's
``top_k`` documents. The same search gives the hard-negative candidates (``filters.negatives_kernel``).

Ranking, precisely (``rank`` is what the release and the rejects record):
- The index holds the block's distinct documents (by embedded text), so a document shared by several pairs
  (the same answer to two questions) is one entry and a correct hit for each of them.
- A document does not compete with its query's own positives: documents that are positives of the same query
  (same normalized query text) elsewhere in the block, or equal after normalization to one of them, are
  passed over. ``rank`` = how many other documents score higher (ties: smaller document id first).
- Scores are recomputed in float64 from the (float16-shuffled, renormalized) vectors for the candidates FAISS
  returns and rounded to 6 decimals, so the output does not depend on BLAS threads or the machine.
- The search looks ``search_depth`` deep (at least ``range_max`` + 16). A document beyond that depth gets the
  rank of the documents seen ahead of it and ``rank_is_lower_bound: true`` in its reject.

Graph (built for Dataflow; everything between steps is ids, hashes and compact vectors):
  texts: each pair's query and document keyed by hash(prefix, text) -> CombinePerKey (distinct texts with
  the pairs that use them) -> batched encoding, one model per worker -> one (block, vector) element per
  pair role -> GroupByKey per block (dataset, id_bucket(id, ceil(count / pool_size))) -> search + decisions
  -> negatives' texts joined by text key -> CoGroupByKey with the full pairs by id -> pairs / rejects.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from filters.stage import SharedStep, Stage
from pipelines.core.config import ConsistencyConfig, EmbeddingConfig, NegativesConfig
from filters.embedding import EmbedTexts, model_info
from pipelines.core.metrics import StageMetrics
from filters.negatives_kernel import (Candidate, Selection, comparison_key, round_score, score_slack,
                                 round_scores, select_negatives, shortage)
from pipelines.core.progress import Progress
from pipelines.core.records import RejectPolicy, content_hash, id_bucket, make_reject

STAGE = "consistency"
NEGATIVES_STAGE = "negatives"

# Extra candidates fetched past the depth, so that a float32 near-tie at the cut in FAISS cannot change which
# documents the float64 re-scoring keeps.
TIE_SLACK = 8
# The negatives' window needs this many more candidates than range_max (positives are passed over).
NEGATIVES_DEPTH_SLACK = 16
# Queries re-scored in float64 at a time (bounds the gathered candidate matrix: rows x depth x dim).
RESCORE_ROWS = 256
# Reported ids of the documents that outranked a rejected pair.
OUTRANKED_REPORTED = 10

QUERY, DOCUMENT = "query", "document"


# ---------------------------------------------------------------------------------------------------------
# Plain functions: the block search and the decisions (tests call these without Beam).


@dataclass(frozen=True)
class BlockMember:
    """One pair as the block sees it: ids, text keys, comparison keys and vectors."""

    pair_id: str
    query_key: str
    query_norm: str
    document_key: str
    document_norm: str
    query_vector: np.ndarray
    document_vector: np.ndarray


@dataclass
class PairDecision:
    pair_id: str
    kept: bool
    positive: float
    rank: int
    rank_is_lower_bound: bool = False
    # For rejects: the best-ranked documents ahead of the pair's own (as the smallest pair id holding each).
    outranked_by: list[str] = field(default_factory=list)
    outranked_scores: list[float] = field(default_factory=list)
    negatives: Selection | None = None


@dataclass
class BlockResult:
    decisions: list[PairDecision]
    documents: int
    queries: int
    index: str


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64 (vectors come back from float16 slightly off unit length)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def build_index(documents: np.ndarray, config: ConsistencyConfig):
    """Exact inner product while the block is at most ``ivf_min_size`` documents; IVF (inverted lists over
    k-means cells, ``ivf_nprobe`` cells searched) beyond."""
    import faiss

    if config.faiss_threads:
        faiss.omp_set_num_threads(config.faiss_threads)
    count, dimension = documents.shape
    if count <= config.ivf_min_size:
        index = faiss.IndexFlatIP(dimension)
        index.add(documents)
        return index, "flat"
    # FAISS wants ~39 training points per cell.
    cells = max(1, min(config.ivf_nlist, count // 39))
    index = faiss.index_factory(dimension, f"IVF{cells},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(documents)
    index.add(documents)
    faiss.extract_index_ivf(index).nprobe = min(config.ivf_nprobe, cells)
    return index, "ivf"


def search_block(documents: np.ndarray, queries: np.ndarray, depth: int,
                 config: ConsistencyConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Top ``depth`` documents for every query: (indices [q, k], float64 scores [q, k], index kind).

    Rows are ordered by score descending, then document index ascending (documents are sorted by id, so ties
    break by id); -1 / -inf pad rows where IVF found fewer. Queries go to FAISS ``search_batch`` at a time
    (batches under ~1,000 fall off FAISS's fast BLAS path)."""
    documents32 = np.ascontiguousarray(documents, dtype=np.float32)
    queries32 = np.ascontiguousarray(queries, dtype=np.float32)
    count = documents32.shape[0]
    keep = min(count, depth)
    fetch = min(count, depth + TIE_SLACK)
    index, kind = build_index(documents32, config)
    out_indices = np.full((len(queries32), keep), -1, dtype=np.int64)
    out_scores = np.full((len(queries32), keep), -np.inf, dtype=np.float64)
    for start in range(0, len(queries32), config.search_batch):
        _, found = index.search(queries32[start:start + config.search_batch], fetch)
        for sub in range(0, len(found), RESCORE_ROWS):
            rows = slice(start + sub, start + sub + len(found[sub:sub + RESCORE_ROWS]))
            ids = found[sub:sub + RESCORE_ROWS]
            missing = ids < 0
            safe_ids = np.where(missing, 0, ids)
            scores = np.einsum("qd,qkd->qk", queries32[rows].astype(np.float64),
                               documents32[safe_ids].astype(np.float64))
            scores[missing] = -np.inf
            sort_ids = np.where(missing, count, ids)
            order = np.lexsort((sort_ids, -scores), axis=1)[:, :keep]
            out_indices[rows] = np.take_along_axis(np.where(missing, -1, ids), order, axis=1)
            out_scores[rows] = np.take_along_axis(scores, order, axis=1)
    return out_indices, out_scores, kind


def search_depth(consistency: ConsistencyConfig, negatives: NegativesConfig | None) -> int:
    depth = max(consistency.search_depth, consistency.top_k + 1)
    if negatives is not None:
        depth = max(depth, negatives.range_max + NEGATIVES_DEPTH_SLACK)
    return depth


def decide_block(members: Sequence[BlockMember], consistency: ConsistencyConfig | None,
                 negatives: NegativesConfig | None, score_slack: float = 0.0) -> BlockResult:
    """Top-k decisions, ranks, scores and negatives for every pair of one block.

    ``consistency=None`` keeps every pair (ranks and scores are still recorded); ``negatives=None`` mines
    none; ``score_slack``: how far the vectors' scores may be from the model's (``negatives_kernel.score_slack``).
    Independent of the order of ``members``."""
    search_config = consistency or ConsistencyConfig()
    by_id: dict[str, BlockMember] = {}
    for member in members:
        by_id.setdefault(member.pair_id, member)
    ordered = [by_id[pair_id] for pair_id in sorted(by_id)]
    if not ordered:
        return BlockResult([], 0, 0, "none")

    document_keys = sorted({m.document_key for m in ordered})
    document_row = {key: row for row, key in enumerate(document_keys)}
    document_vectors: list[np.ndarray | None] = [None] * len(document_keys)
    document_norms = [""] * len(document_keys)
    document_holder = [""] * len(document_keys)
    for member in ordered:  # ascending ids: the holder of a document is its smallest pair id
        row = document_row[member.document_key]
        if document_vectors[row] is None:
            document_vectors[row] = member.document_vector
            document_norms[row] = member.document_norm
            document_holder[row] = member.pair_id
    query_keys = sorted({m.query_key for m in ordered})
    query_row = {key: row for row, key in enumerate(query_keys)}
    query_vectors: list[np.ndarray | None] = [None] * len(query_keys)
    for member in ordered:
        query_vectors[query_row[member.query_key]] = member.query_vector

    positives_of_query: dict[str, set[int]] = {}
    positive_norms_of_query: dict[str, set[str]] = {}
    for member in ordered:
        positives_of_query.setdefault(member.query_norm, set()).add(document_row[member.document_key])
        positive_norms_of_query.setdefault(member.query_norm, set()).add(member.document_norm)

    documents = unit_rows(np.stack(document_vectors))
    queries = unit_rows(np.stack(query_vectors))
    depth = search_depth(search_config, negatives)
    found, scores, kind = search_block(documents, queries, depth, search_config)
    # Every document was ranked (exact search as deep as the block): a missing own document cannot happen.
    complete = kind == "flat" and found.shape[1] == len(document_keys)

    # Rounded once for the whole block; Python lists are faster than arrays element by element.
    found_rows = found.tolist()
    score_rows = round_scores(scores).tolist()
    decisions = []
    for member in ordered:
        qrow = query_row[member.query_key]
        own = document_row[member.document_key]
        positive_rows = positives_of_query[member.query_norm]
        positive_norms = positive_norms_of_query[member.query_norm]
        row_ids, row_scores = found_rows[qrow], score_rows[qrow]
        ahead: list[tuple[int, float]] = []
        own_score = None
        for doc, score in zip(row_ids, row_scores):
            if doc < 0:
                break
            if doc == own:
                own_score = score
                break
            if doc not in positive_rows and document_norms[doc] not in positive_norms:
                ahead.append((doc, score))
        lower_bound = own_score is None
        if own_score is None:
            own_score = round_score(float(queries[qrow] @ documents[own]))
            lower_bound = not complete
        rank = len(ahead)
        kept = consistency is None or rank < consistency.top_k
        decision = PairDecision(pair_id=member.pair_id, kept=kept, positive=own_score, rank=rank,
                                rank_is_lower_bound=lower_bound)
        if not kept:
            decision.outranked_by = [document_holder[doc] for doc, _ in ahead[:OUTRANKED_REPORTED]]
            decision.outranked_scores = [score for _, score in ahead[:OUTRANKED_REPORTED]]
        elif negatives is not None:
            candidates = [Candidate(document_keys[doc], score, document_norms[doc])
                          for doc, score in zip(row_ids, row_scores) if doc >= 0]
            decision.negatives = select_negatives(
                candidates, pair_id=member.pair_id, own_key=member.document_key, positive=own_score,
                query_norm=member.query_norm, positive_keys=[document_keys[r] for r in positive_rows],
                positive_norms=positive_norms, config=negatives, slack=score_slack)
        decisions.append(decision)
    return BlockResult(decisions, documents=len(document_keys), queries=len(query_keys), index=kind)


# ---------------------------------------------------------------------------------------------------------
# Applying a decision to the full pair, and the per-pair summary the report adds up.


def rank_bucket(rank: int) -> str:
    for low, high in ((5, 9), (10, 19), (20, 49)):
        if low <= rank <= high:
            return f"{low}-{high}"
    return str(rank) if rank < 5 else "50+"


def score_bucket(score: float) -> str:
    """Tenths: "0.8" holds [0.8, 0.9); below zero all in "<0"."""
    if score < 0:
        return "<0"
    return f"{min(math.floor(score * 10), 9) / 10:.1f}"


def _scores_as_micro(values: Iterable[float]) -> int:
    # Integer millionths: sums of them are exact whatever the order the runner adds them in.
    return sum(int(round(value * 1_000_000)) for value in values)


def apply_decision(pair: dict[str, Any], decision: dict[str, Any] | None, negative_texts: dict[int, str],
                   consistency_on: bool, negatives: NegativesConfig | None,
                   policy: RejectPolicy) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, int]]:
    """(kept pair or None, reject or None, summary counters) for one pair."""
    first_stage = STAGE if consistency_on else NEGATIVES_STAGE
    summary: Counter = Counter(pairs=1)
    if decision is None:
        summary[f"dropped:{first_stage}:invalid_text"] += 1
        return None, make_reject(pair, stage=first_stage, reason="invalid_text",
                                 detail={"message": "query and document must be non-empty strings"},
                                 policy=policy), dict(summary)
    rank, positive = decision["rank"], decision["positive"]
    summary[f"rank:{rank_bucket(rank)}"] += 1
    if not decision["kept"]:
        summary[f"dropped:{STAGE}:not_in_top_k"] += 1
        summary[f"dropped_score:{score_bucket(positive)}"] += 1
        detail = {"rank": rank, "rank_is_lower_bound": decision["rank_is_lower_bound"], "score": positive,
                  "top_k": decision["top_k"], "outranked_by": decision["outranked_by"],
                  "outranked_scores": decision["outranked_scores"], "block": decision["block"]}
        return None, make_reject(pair, stage=STAGE, reason="not_in_top_k", detail=detail,
                                 policy=policy), dict(summary)
    negative_list: list[str] = []
    negative_scores: list[float] = []
    if negatives is not None:
        for slot, score in enumerate(decision["negative_scores"]):
            if slot in negative_texts:
                negative_list.append(negative_texts[slot])
                negative_scores.append(score)
        for rule, count in decision["skipped_by_rule"].items():
            summary[f"skipped:{rule}"] += count
        short = shortage(len(negative_list), negatives)
        summary[f"negatives_count:{len(negative_list)}"] += 1
        summary["short"] += int(short)
        if short:
            summary[f"dropped:{NEGATIVES_STAGE}:too_few_negatives"] += 1
            detail = {"found": len(negative_list), "num_negatives": negatives.num_negatives, "eligible": decision["eligible"],
                      "positive": positive, "rank": rank, "skipped_by_rule": decision["skipped_by_rule"],
                      "block": decision["block"]}
            return None, make_reject(pair, stage=NEGATIVES_STAGE, reason="too_few_negatives", detail=detail,
                                     policy=policy), dict(summary)
        if negative_list:
            summary["pairs_with_negatives"] += 1
            summary["negatives_mined"] += len(negative_list)
            for score in negative_scores:
                summary[f"negative_score:{score_bucket(score)}"] += 1
    summary["kept"] += 1
    summary[f"kept_score:{score_bucket(positive)}"] += 1
    summary["kept_positive_micro"] += _scores_as_micro([positive])
    out = dict(pair)
    scores = dict(pair.get("scores") or {})
    scores.update({"positive": positive, "rank": rank, "negatives": negative_scores})
    out["scores"] = scores
    if negatives is not None:
        out["negatives"] = negative_list
    return out, None, dict(summary)


def decision_record(decision: PairDecision, top_k: int | None, block: str) -> dict[str, Any]:
    """A decision as the small picklable dict that travels to the join with the full pair."""
    selection = decision.negatives
    return {
        "kept": decision.kept,
        "positive": decision.positive,
        "rank": decision.rank,
        "rank_is_lower_bound": decision.rank_is_lower_bound,
        "outranked_by": decision.outranked_by,
        "outranked_scores": decision.outranked_scores,
        "top_k": top_k,
        "block": block,
        "negative_scores": selection.scores if selection else [],
        "eligible": selection.eligible if selection else 0,
        "skipped_by_rule": selection.skipped_by_rule if selection else {},
    }


def build_report(totals: dict[str, int], blocks: list[dict[str, Any]], unique_texts: int,
                 model: dict[str, Any], consistency: ConsistencyConfig | None,
                 negatives: NegativesConfig | None, vector_dtype: str = "float32",
                 slack: float = 0.0) -> dict[str, Any]:
    """The stage report for the manifest, from the summed per-pair counters; ``slack``: the score slack the
    negatives' bounds kept."""

    def prefixed(prefix: str) -> dict[str, int]:
        return dict(sorted((key[len(prefix):], n) for key, n in totals.items() if key.startswith(prefix)))

    pairs = totals.get("pairs", 0)
    kept = totals.get("kept", 0)
    dropped = prefixed("dropped:")
    model = dict(model)
    if blocks and not model.get("dimension"):
        model["dimension"] = blocks[0]["dimension"]
    report: dict[str, Any] = {
        "stage": STAGE if consistency is not None else NEGATIVES_STAGE,
        "stages": [name for name, config in ((STAGE, consistency), (NEGATIVES_STAGE, negatives))
                   if config is not None],
        "model": model,
        "pairs_in": pairs,
        "unique_texts_embedded": unique_texts,
        "text_references": 2 * pairs,
        "blocks": len(blocks),
        "largest_block_pairs": max((b["pairs"] for b in blocks), default=0),
        "largest_block_documents": max((b["documents"] for b in blocks), default=0),
        "index": dict(sorted(Counter(b["index"] for b in blocks).items())),
        "kept": kept,
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        "top_k": consistency.top_k if consistency is not None else None,
        "search_depth": search_depth(consistency or ConsistencyConfig(), negatives),
        "vector_dtype": vector_dtype,
        "score_slack": slack,
        "rank_histogram": prefixed("rank:"),
        "kept_positive_score_histogram": prefixed("kept_score:"),
        "dropped_positive_score_histogram": prefixed("dropped_score:"),
        "kept_positive_score_mean": (round(totals.get("kept_positive_micro", 0) / kept / 1_000_000, 6)
                                     if kept else None),
    }
    if negatives is not None:
        report["negatives"] = {
            "pairs_with_negatives": totals.get("pairs_with_negatives", 0),
            "negatives_mined": totals.get("negatives_mined", 0),
            "short": totals.get("short", 0),
            "dropped": totals.get(f"dropped:{NEGATIVES_STAGE}:too_few_negatives", 0),
            "per_pair_histogram": dict(sorted(prefixed("negatives_count:").items(), key=lambda kv: int(kv[0]))),
            "skipped_by_rule": prefixed("skipped:"),
            "score_histogram": prefixed("negative_score:"),
        }
    return report


# ---------------------------------------------------------------------------------------------------------
# Beam


def _text_refs(pair: dict[str, Any], config: EmbeddingConfig):
    """(text key, (prefix, text, (pair id, role, dataset))) for the query and the document of a valid pair."""
    query, document = pair.get("query"), pair.get("document")
    if not (isinstance(query, str) and isinstance(document, str) and query and document):
        return
    for role, prefix, text in ((QUERY, config.query_prefix, query), (DOCUMENT, config.document_prefix, document)):
        yield content_hash(prefix, text), (prefix, text, (pair["id"], role, pair.get("dataset", "")))


class CollectTextRefs(beam.CombineFn):
    """Per text key: the text once, with every (pair id, role, dataset) that uses it."""

    def create_accumulator(self):
        return None, None, []

    def add_input(self, accumulator, element):
        prefix, text, ref = element
        accumulator[2].append(ref)
        return prefix, text, accumulator[2]

    def merge_accumulators(self, accumulators):
        prefix = text = None
        refs: list = []
        for acc_prefix, acc_text, acc_refs in accumulators:
            if acc_text is not None:
                prefix, text = acc_prefix, acc_text
            refs.extend(acc_refs)
        return prefix, text, refs

    def extract_output(self, accumulator):
        prefix, text, refs = accumulator
        return prefix, text, sorted(refs)


def block_key(pair_id: str, dataset: str, counts: dict[str, int], pool_size: int) -> str:
    blocks = max(1, math.ceil(counts.get(dataset, 1) / pool_size))
    return f"{dataset}/{id_bucket(pair_id, blocks)}"


class _RouteVectors(beam.DoFn):
    """An embedded text -> one (block, entry) per pair that uses it, with a compact vector."""

    def __init__(self, pool_size: int, dtype: str):
        self.pool_size = pool_size
        self.dtype = dtype

    def process(self, element, counts):
        key, (norm, refs), vector = element
        payload = np.asarray(vector, dtype=self.dtype).tobytes()
        for pair_id, role, dataset in refs:
            yield block_key(pair_id, dataset, counts, self.pool_size), (pair_id, role, key, norm, payload)


class _DecideBlock(beam.DoFn):
    BLOCKS_TAG = "blocks"
    REQUESTS_TAG = "requests"

    def __init__(self, consistency: ConsistencyConfig | None, negatives: NegativesConfig | None, dtype: str,
                 slack: float):
        self.consistency = consistency
        self.negatives = negatives
        self.dtype = dtype
        self.slack = slack

    def setup(self):
        self.blocks = Metrics.counter(STAGE, "blocks")
        self.block_pairs = Metrics.distribution(STAGE, "block_pairs")
        self.progress = None

    def process(self, element, counts=None):
        if self.progress is None:
            self.progress = Progress("search", "pairs", sum(counts.values()) if counts else None)
        block, entries = element
        roles: dict[str, dict[str, tuple]] = {}
        for pair_id, role, key, norm, payload in entries:
            roles.setdefault(pair_id, {})[role] = (key, norm, payload)
        members = []
        for pair_id in sorted(roles):
            both = roles[pair_id]
            if QUERY not in both or DOCUMENT not in both:
                continue
            (q_key, q_norm, q_vec), (d_key, d_norm, d_vec) = both[QUERY], both[DOCUMENT]
            members.append(BlockMember(pair_id, q_key, q_norm, d_key, d_norm,
                                       np.frombuffer(q_vec, dtype=self.dtype),
                                       np.frombuffer(d_vec, dtype=self.dtype)))
        result = decide_block(members, self.consistency, self.negatives, self.slack)
        self.progress.add(len(roles))
        self.blocks.inc()
        self.block_pairs.update(len(members))
        dimension = len(members[0].query_vector) if members else 0
        yield beam.pvalue.TaggedOutput(self.BLOCKS_TAG, {
            "block": block, "pairs": len(members), "documents": result.documents, "queries": result.queries,
            "index": result.index, "dimension": dimension})
        top_k = self.consistency.top_k if self.consistency is not None else None
        for decision in result.decisions:
            yield decision.pair_id, decision_record(decision, top_k, block)
            if decision.negatives is not None:
                for slot, key in enumerate(decision.negatives.keys):
                    yield beam.pvalue.TaggedOutput(self.REQUESTS_TAG, (key, (decision.pair_id, slot)))


def _query_vector(element):
    """(text key, float16 vector bytes) for an embedded text that is some pair's query."""
    key, (_, refs), vector = element
    if any(role == QUERY for _, role, _ in refs):
        yield key, np.asarray(vector, dtype=np.float16).tobytes()


def _negative_texts(element):
    _, grouped = element
    texts = list(grouped["text"])
    if not texts:
        return
    for pair_id, slot in grouped["want"]:
        yield pair_id, (slot, texts[0])


class _Finish(beam.DoFn):
    REJECTS_TAG = "rejects"
    SUMMARY_TAG = "summary"

    def __init__(self, consistency_on: bool, negatives: NegativesConfig | None, policy: RejectPolicy):
        self.consistency_on = consistency_on
        self.negatives = negatives
        self.policy = policy

    def setup(self):
        self.metrics = {name: StageMetrics(name) for name in (STAGE, NEGATIVES_STAGE)}

    def process(self, element):
        _, grouped = element
        decisions = list(grouped["decision"])
        decision = decisions[0] if decisions else None
        negative_texts = dict(grouped["negative"])
        first = STAGE if self.consistency_on else NEGATIVES_STAGE
        for pair in grouped["pair"]:
            self.metrics[first].seen()
            kept, reject, summary = apply_decision(pair, decision, negative_texts, self.consistency_on,
                                                   self.negatives, self.policy)
            yield beam.pvalue.TaggedOutput(self.SUMMARY_TAG, summary)
            if reject is not None:
                self.metrics[reject["stage"]].dropped(reject["reason"])
                yield beam.pvalue.TaggedOutput(self.REJECTS_TAG, reject)
            else:
                self.metrics[first].passed()
                if self.negatives is not None:
                    self.metrics[NEGATIVES_STAGE].count("negatives_mined", len(kept["negatives"]))
                yield kept


class SumCounters(beam.CombineFn):
    def create_accumulator(self):
        return Counter()

    def add_input(self, accumulator, element):
        accumulator.update(element)
        return accumulator

    def merge_accumulators(self, accumulators):
        total: Counter = Counter()
        for accumulator in accumulators:
            total.update(accumulator)
        return total

    def extract_output(self, accumulator):
        return dict(accumulator)


class EmbeddingStages(beam.PTransform):
    """`consistency` + `negatives` over one shared embedding pass and one batched search per block.

    ``consistency=None``: every pair is kept (still scored and ranked); ``negatives=None``: none mined.
    Returns {"pairs", "rejects", "report"}."""

    def __init__(self, embedding: EmbeddingConfig, consistency: ConsistencyConfig | None,
                 negatives: NegativesConfig | None, policy: RejectPolicy):
        super().__init__()
        self.embedding = embedding
        self.consistency = consistency
        self.negatives = negatives
        self.policy = policy

    def expand(self, pairs):
        embedding, consistency, negatives = self.embedding, self.consistency, self.negatives
        search_config = consistency or ConsistencyConfig()
        dtype = embedding.shuffle_dtype
        slack = score_slack(dtype, embedding.backend)
        # Read once here (weights hash) so the report names exactly what the workers load.
        model = model_info(embedding)

        counts = (pairs
                  | "DatasetOf" >> beam.Map(lambda pair: (pair.get("dataset", ""), 1))
                  | "CountPerDataset" >> beam.CombinePerKey(sum))
        unique = (pairs
                  | "TextRefs" >> beam.FlatMap(_text_refs, embedding)
                  | "DistinctTexts" >> beam.CombinePerKey(CollectTextRefs()))
        vectors = (unique
                   | "ToEncode" >> beam.MapTuple(
                       lambda key, value: (key, value[0] + value[1], (comparison_key(value[1]), value[2])))
                   | "Embed" >> EmbedTexts(embedding, namespace=STAGE))
        embedded = vectors | "ToBlocks" >> beam.ParDo(_RouteVectors(search_config.pool_size, dtype),
                                                      counts=beam.pvalue.AsDict(counts))
        # The queries' vectors for the report's map (which would otherwise embed its sample again).
        query_vectors = vectors | "QueryVectors" >> beam.FlatMap(_query_vector)
        decided = (embedded
                   | "GroupBlocks" >> beam.GroupByKey()
                   | "Decide" >> beam.ParDo(_DecideBlock(consistency, negatives, dtype, slack),
                                          counts=beam.pvalue.AsDict(counts)).with_outputs(
                       _DecideBlock.BLOCKS_TAG, _DecideBlock.REQUESTS_TAG, main="decisions"))

        if negatives is not None:
            document_texts = unique | "DocumentTexts" >> beam.FlatMap(
                lambda element: [(element[0], element[1][1])]
                if any(role == DOCUMENT for _, role, _ in element[1][2]) else [])
            negative_texts = ({"text": document_texts, "want": decided[_DecideBlock.REQUESTS_TAG]}
                              | "JoinNegativeTexts" >> beam.CoGroupByKey()
                              | "NegativeTexts" >> beam.FlatMap(_negative_texts))
        else:
            negative_texts = pairs.pipeline | "NoNegatives" >> beam.Create([])

        keyed_pairs = pairs | "KeyById" >> beam.Map(lambda pair: (pair.get("id", ""), pair))
        finished = ({"pair": keyed_pairs, "decision": decided.decisions, "negative": negative_texts}
                    | "JoinById" >> beam.CoGroupByKey()
                    | "Finish" >> beam.ParDo(_Finish(consistency is not None, negatives, self.policy))
                    .with_outputs(_Finish.REJECTS_TAG, _Finish.SUMMARY_TAG, main="pairs"))

        unique_count = unique | "CountTexts" >> beam.combiners.Count.Globally()
        report = (finished[_Finish.SUMMARY_TAG]
                  | "SumSummaries" >> beam.CombineGlobally(SumCounters())
                  | "Report" >> beam.Map(
                      lambda totals, blocks, texts: build_report(
                          totals, sorted(blocks, key=lambda b: b["block"]), texts, model, consistency, negatives,
                          dtype, slack),
                      blocks=beam.pvalue.AsList(decided[_DecideBlock.BLOCKS_TAG]),
                      texts=beam.pvalue.AsSingleton(unique_count)))
        return {"pairs": finished.pairs, "rejects": finished[_Finish.REJECTS_TAG], "report": report,
                "query_vectors": query_vectors}


def _embed_and_search(config, policy: RejectPolicy, active: tuple[str, ...]) -> EmbeddingStages:
    """The shared step for the active ones of `consistency` and `negatives` (a stage left out is None)."""
    return EmbeddingStages(config.embedding, config.consistency if STAGE in active else None,
                           config.negatives if NEGATIVES_STAGE in active else None, policy)


# One embedding pass and one search per block serve both stages; "embedding" labels it in the graph.
EMBED_AND_SEARCH = SharedStep("embedding", _embed_and_search, needs_model=True)
STAGE_SPEC = Stage(STAGE, config_key="consistency", shared=EMBED_AND_SEARCH)
