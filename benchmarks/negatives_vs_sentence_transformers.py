"""The peer: sentence-transformers' ``mine_hard_negatives`` against our `consistency` + `negatives` stages.

Same pairs, same model (loaded once, before any timing), same encoding batch size. The peer runs
``mine_hard_negatives(dataset, model, use_faiss=True, relative_margin=0.05, num_negatives=7)``; ours runs the
``EmbeddingStages`` transform (embedding, top-k filter and negatives from one search) in a Beam pipeline on
the DirectRunner. Target: ours not slower, although it also filters.

Quality, on the same pairs: every (query, positive, negative) either side produced is re-scored with fresh
float32 embeddings, and we count negatives scoring at or above 95% of their positive (ours: none by
construction), negatives whose text equals the positive or the query after normalization, and negatives that
are a positive of the same query elsewhere in the data (false negatives).

    python benchmarks/negatives_vs_sentence_transformers.py [--pairs agnews|quora] [--limit N] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DATA = Path(os.environ.get("PAIR_CURATION_DATA", REPO_ROOT.parent / "shared" / "data"))

MARGIN = 0.05
NUM_NEGATIVES = 7


def read_pairs(kind: str, limit: int | None) -> list[tuple[str, str]]:
    """(query, document) pairs read with the csv module: AG News title -> description, or Quora duplicates."""
    if kind == "agnews":
        with (DATA / "news" / "ag_news_csv" / "test.csv").open(encoding="utf-8", newline="") as handle:
            pairs = [(row[1].strip(), row[2].strip()) for row in csv.reader(handle) if len(row) == 3]
    else:
        with (DATA / "quora" / "mini_quora_duplicate_questions.tsv").open(encoding="utf-8", newline="") as handle:
            pairs = [(row["question1"].strip(), row["question2"].strip())
                     for row in csv.DictReader(handle, delimiter="\t") if row["is_duplicate"] == "1"]
    pairs = [(query, document) for query, document in pairs if query and document and query != document]
    return pairs[:limit] if limit else pairs


def run_peer(pairs, model, batch_size: int):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    dataset = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [d for _, d in pairs]})
    start = time.perf_counter()
    mined = mine_hard_negatives(dataset, model, use_faiss=True, relative_margin=MARGIN,
                                num_negatives=NUM_NEGATIVES, batch_size=batch_size, output_format="n-tuple",
                                verbose=False)
    seconds = time.perf_counter() - start
    negative_columns = [name for name in mined.column_names if name.startswith("negative")]
    triplets = [(row["anchor"], row["positive"], row[name]) for row in mined for name in negative_columns]
    return seconds, len(mined), triplets


def run_ours(pairs, embedding, work: Path):
    import apache_beam as beam

    from filters.consistency import EmbeddingStages
    from pipelines.core.config import ConsistencyConfig, NegativesConfig
    from pipelines.core.records import RAW_REJECT_CHARS, RejectPolicy, new_pair

    records = [new_pair(dataset="bench", source="bench", query=q, document=d, provenance={"record": str(i)})
               for i, (q, d) in enumerate(pairs)]
    out = work / "ours.jsonl"
    start = time.perf_counter()
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        result = (pipeline | beam.Create(records)
                  | EmbeddingStages(embedding, ConsistencyConfig(),
                                    NegativesConfig(relative_margin=MARGIN, num_negatives=NUM_NEGATIVES),
                                    RejectPolicy(keep_texts=True, raw_chars=RAW_REJECT_CHARS)))
        (result["pairs"] | beam.Map(json.dumps) | beam.io.WriteToText(str(out), shard_name_template=""))
    seconds = time.perf_counter() - start
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    triplets = [(pair["query"], pair["document"], negative) for pair in kept for negative in pair["negatives"]]
    return seconds, len(kept), triplets


def embed_all(triplet_lists, embedding) -> dict:
    """Fresh float32 embeddings of every text in the triplets, each encoded once."""
    from filters.embedding import encode_texts

    texts = sorted({text for triplets in triplet_lists for triplet in triplets for text in triplet})
    return dict(zip(texts, encode_texts(texts, embedding)))


def audit(triplets, pairs, vectors) -> dict[str, int]:
    import numpy as np

    from filters.negatives_kernel import comparison_text

    positives_of = defaultdict(set)
    for query, document in pairs:
        positives_of[comparison_text(query)].add(comparison_text(document))
    counts = {"negatives": len(triplets), "above_95pct_of_positive": 0, "equal_to_positive_or_query": 0,
              "positive_of_same_query": 0}
    for query, positive, negative in triplets:
        q, p, n = vectors[query], vectors[positive], vectors[negative]
        positive_score, negative_score = float(np.dot(q, p)), float(np.dot(q, n))
        if negative_score >= positive_score - abs(positive_score) * MARGIN:
            counts["above_95pct_of_positive"] += 1
        negative_text = comparison_text(negative)
        if negative_text in (comparison_text(positive), comparison_text(query)):
            counts["equal_to_positive_or_query"] += 1
        elif negative_text in positives_of[comparison_text(query)]:
            counts["positive_of_same_query"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", choices=["agnews", "quora"], default="agnews")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", choices=["torch", "torch-bf16", "onnx", "onnx-int8"], default="torch",
                        help="our back end (the peer always runs sentence-transformers on torch)")
    args = parser.parse_args(argv)

    from pipelines.core.config import EmbeddingConfig
    from filters.embedding import get_encoder

    embedding = EmbeddingConfig(backend=args.backend)
    model = get_encoder(EmbeddingConfig(backend="torch")).model  # the peer's: the same weights, loaded once
    get_encoder(embedding)  # ours, loaded before timing too
    pairs = read_pairs(args.pairs, args.limit)
    work = Path(tempfile.mkdtemp(prefix="negatives-peer-"))
    peer_times, our_times = [], []
    for repeat in range(args.repeats):
        peer_seconds, peer_rows, peer_triplets = run_peer(pairs, model, embedding.batch_size)
        our_seconds, our_rows, our_triplets = run_ours(pairs, embedding, work)
        peer_times.append(peer_seconds)
        our_times.append(our_seconds)
        print(f"run {repeat + 1}: mine_hard_negatives {peer_seconds:.1f} s, ours {our_seconds:.1f} s", flush=True)
    vectors = embed_all([peer_triplets, our_triplets], EmbeddingConfig(backend="torch"))
    peer_audit = audit(peer_triplets, pairs, vectors)
    our_audit = audit(our_triplets, pairs, vectors)
    peer_best, our_best = min(peer_times), min(our_times)
    print(f"\n{len(pairs)} {args.pairs} pairs, all-MiniLM-L6-v2, relative_margin={MARGIN}, "
          f"num_negatives={NUM_NEGATIVES}, our backend {args.backend}, fastest of {args.repeats}:")
    print(f"  sentence-transformers mine_hard_negatives(use_faiss=True): {peer_best:7.1f} s, "
          f"{peer_rows} rows out (no filtering)")
    print(f"  ours (consistency top-2 + negatives, Beam DirectRunner):   {our_best:7.1f} s, "
          f"{our_rows} pairs kept")
    ratio = our_best / peer_best
    print(f"  time ratio ours / peer: {ratio:.3f}   target <= 1.0: {'met' if ratio <= 1.0 else 'NOT met'}")
    print("  negatives re-scored with fresh float32 embeddings:")
    print(f"    {'':34s}{'peer':>10s}{'ours':>10s}")
    for key in peer_audit:
        print(f"    {key:34s}{peer_audit[key]:>10d}{our_audit[key]:>10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
