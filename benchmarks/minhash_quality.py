"""Near-duplicate quality: planted near-duplicates in real texts, judged against exact Jaccard.

    python benchmarks/minhash_quality.py [--base N] [--planted P] [--seed S]

Real long texts (BBC and XSum articles, StackExchange posts with 60+ words) get word edits (replace, delete,
insert) until their Jaccard with the original reaches a target drawn uniformly from [0.5, 1.0]; the true Jaccard of every pair of
documents (planted or natural: the BBC set reprints some stories) is computed exactly on word 5-gram
shingles. Then:
- this stage (filters.minhash.MinHashDedup, run by Beam's DirectRunner) with its defaults, and variants;
- datasketch's default ``MinHashLSH(threshold=0.8, num_perm=128)`` fed the same signatures (bit-compatible:
  loaded with ``MinHash(hashvalues=...)``), candidates taken as duplicates, as its users do; and the same
  index with candidates verified by the signature estimate.
A pair counts as found when both documents end in the same cluster (stage) or the index returns it
(datasketch). Recall is over pairs with exact Jaccard >= threshold + 0.05, per Jaccard
bin below (target >= 0.99); no pair below Jaccard 0.7 may be joined ("unrelated": below 0.5).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minhash_speed as corpus  # noqa: E402  (the real-text readers)

from filters import minhash_kernel as kernel  # noqa: E402
from pipelines.core.config import MinHashConfig  # noqa: E402
from pipelines.core.records import RAW_REJECT_CHARS, RejectPolicy, new_pair  # noqa: E402

THRESHOLD = 0.8
BINS = [(0.5, 0.7), (0.7, 0.75), (0.75, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.01)]
FILLER = ("however", "reportedly", "analysts", "meanwhile", "also", "still", "notably", "indeed", "several")


def light_edit(text: str, target: float, rng: random.Random) -> str:
    """Random word edits (replace, delete, insert), one at a time, until the exact word 5-gram Jaccard with
    the original falls to ``target`` or just below: the planted Jaccards spread like the targets."""
    original = kernel.shingle_hashes(text, "word", 5)
    words = text.split(" ")
    edited = text
    # Each edit breaks about 5 shingles; check after every step once close to the target.
    while kernel.exact_jaccard(original, kernel.shingle_hashes(edited, "word", 5)) > target:
        position = rng.randrange(len(words))
        operation = rng.choice(("replace", "delete", "insert"))
        if operation == "replace":
            words[position] = rng.choice(FILLER)
        elif operation == "delete" and len(words) > 20:
            del words[position]
        else:
            words.insert(position, rng.choice(FILLER))
        edited = " ".join(words)
    return edited


def build_corpus(base_count: int, planted_count: int, seed: int) -> tuple[list[str], list[str]]:
    """(texts, labels): real long texts, then planted edited copies of the first ``planted_count``."""
    sources = corpus.real_texts()
    seen, base = set(), []
    for name in ("bbc", "xsum", "stackexchange"):
        for text in sources[name]:
            if len(text.split()) >= 60 and text not in seen:
                seen.add(text)
                base.append(text)
    rng = random.Random(seed)
    rng.shuffle(base)
    base = base[:base_count]
    texts, labels = list(base), ["original"] * len(base)
    for index in range(min(planted_count, len(base))):
        headline, newline, body = base[index].partition("\n")
        target = rng.uniform(0.5, 1.0)
        # Answers have no headline: the whole text is edited.
        texts.append(headline + "\n" + light_edit(body, target, rng) if newline
                     else light_edit(headline, target, rng))
        labels.append(f"copy of {index}")
    return texts, labels


def exact_jaccard_pairs(texts: list[str], minimum: float = 0.3) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every pair of documents at or above ``minimum`` (sparse shingle-incidence product)."""
    hashes = [np.unique(kernel.shingle_hashes(text, "word", 5)) for text in texts]
    vocabulary, columns = np.unique(np.concatenate(hashes), return_inverse=True)
    rows = np.repeat(np.arange(len(texts)), [len(h) for h in hashes])
    incidence = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, columns)),
                                  shape=(len(texts), len(vocabulary)))
    shared = sparse.triu(incidence @ incidence.T, k=1).tocoo()
    sizes = np.array([len(h) for h in hashes])
    jaccard = shared.data / (sizes[shared.row] + sizes[shared.col] - shared.data)
    keep = jaccard >= minimum
    return {(int(i), int(j)): float(value)
            for i, j, value in zip(shared.row[keep], shared.col[keep], jaccard[keep])}


def stage_clusters(texts: list[str], config: MinHashConfig) -> tuple[set[tuple[int, int]], dict, list]:
    """Run the Beam stage; return pairs of documents in one cluster, its report, and (removed, survivor)."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

    from filters.minhash import MinHashDedup

    pairs = []
    for index, text in enumerate(texts):
        headline, _, body = text.partition("\n")
        pairs.append(new_pair(dataset="quality", source="benchmark", query=headline, document=body,
                              provenance={"record": str(index)}))
    index_of = {pair["id"]: index for index, pair in enumerate(pairs)}
    with tempfile.TemporaryDirectory() as folder:
        with BeamTestPipeline() as pipeline:
            no_texts = RejectPolicy(keep_texts=False, raw_chars=RAW_REJECT_CHARS)
            result = pipeline | beam.Create(pairs, reshuffle=False) | MinHashDedup(config, no_texts)
            for name in ("rejects", "report"):
                (result[name] | f"Json{name}" >> beam.Map(json.dumps)
                 | f"Write{name}" >> beam.io.WriteToText(f"{folder}/{name}", shard_name_template=""))
        rejects = [json.loads(line) for line in Path(folder, "rejects").read_text().splitlines()]
        report = json.loads(Path(folder, "report").read_text())
    clusters: dict[str, set[int]] = {}
    removed = []
    for reject in rejects:
        detail = reject["detail"]
        members = clusters.setdefault(detail["cluster_id"], set())
        members.update((index_of[reject["id"]], index_of[detail["survivor_id"]]))
        removed.append((index_of[reject["id"]], index_of[detail["survivor_id"]]))
    found = {(min(a, b), max(a, b)) for members in clusters.values() for a in members for b in members if a < b}
    return found, report, removed


def datasketch_pairs(signatures: np.ndarray, verify: bool) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    index = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    sketches = [MinHash(num_perm=128, hashvalues=signature, scheme="affine32") for signature in signatures]
    for number, sketch in enumerate(sketches):
        index.insert(number, sketch)
    found = set()
    for number, sketch in enumerate(sketches):
        for other in index.query(sketch):
            if other != number and (not verify or sketch.jaccard(sketches[other]) >= THRESHOLD):
                found.add((min(number, other), max(number, other)))
    return found


def score(name: str, found: set, truth: dict, removed=None) -> dict:
    positives = {pair for pair, value in truth.items() if value >= THRESHOLD}
    target_pairs = {pair for pair, value in truth.items() if value >= THRESHOLD + 0.05}
    found_jaccard = [truth.get(pair, 0.0) for pair in found]
    row = {
        "method": name,
        "recall@>=0.85": len(found & target_pairs) / max(1, len(target_pairs)),
        "recall@>=0.80": len(found & positives) / max(1, len(positives)),
        "precision": sum(value >= THRESHOLD for value in found_jaccard) / max(1, len(found)),
        "unrelated_joined": sum(value < 0.5 for value in found_jaccard),
        "joined_below_0.7": sum(value < 0.7 for value in found_jaccard),
        "found_pairs": len(found),
        "bins": [],
    }
    for low, high in BINS:
        in_bin = {pair for pair, value in truth.items() if low <= value < high}
        row["bins"].append((len(found & in_bin), len(in_bin)))
    if removed is not None:
        row["removed_far_from_survivor"] = sum(
            truth.get((min(a, b), max(a, b)), 0.0) < 0.5 for a, b in removed)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=2000, help="real long texts")
    parser.add_argument("--planted", type=int, default=1500, help="edited copies planted")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    start = time.perf_counter()
    texts, labels = build_corpus(args.base, args.planted, args.seed)
    truth = exact_jaccard_pairs(texts)
    planted_truth = [value for (i, j), value in truth.items() if labels[j] == f"copy of {i}"]
    print(f"{len(texts)} documents: {labels.count('original')} real texts + "
          f"{len(texts) - labels.count('original')} planted copies; "
          f"{sum(v >= THRESHOLD + 0.05 for v in truth.values())} pairs at exact Jaccard >= "
          f"{THRESHOLD + 0.05:.2f} ({sum(v >= THRESHOLD + 0.05 for v in planted_truth)} planted, the rest "
          f"natural or between copies); threshold {THRESHOLD}\n")

    signatures = kernel.text_signatures(texts, num_perm=128)[0]
    rows = []
    variants = [
        ("stage default (xxh32, 16x8, exact verify)", MinHashConfig()),
        ("stage verify=signature", MinHashConfig(verify="signature")),
        ("stage before #15 (sha1, 14x9, signature verify)",
         MinHashConfig(token_hash="sha1", candidate_margin=0.0, verify="signature")),
        ("stage num_perm=256, verify=signature", MinHashConfig(num_perm=256, verify="signature")),
    ]
    for name, config in variants:
        found, report, removed = stage_clusters(texts, config)
        rows.append(score(name, found, truth, removed))
    rows.append(score("datasketch MinHashLSH(0.8, 128) (9x13)", datasketch_pairs(signatures, False), truth))
    rows.append(score("datasketch MinHashLSH(0.8, 128) + verify", datasketch_pairs(signatures, True), truth))

    header = (f"{'method':<50} {'recall>=.85':>11} {'recall>=.80':>11} {'precision':>9} {'J<0.7':>6} "
              f"{'J<0.5':>6} {'pairs':>6}")
    print(header)
    for row in rows:
        print(f"{row['method']:<50} {row['recall@>=0.85']:>11.3f} {row['recall@>=0.80']:>11.3f} "
              f"{row['precision']:>9.3f} {row['joined_below_0.7']:>6d} {row['unrelated_joined']:>6d} "
              f"{row['found_pairs']:>6d}")
    print("\nfound / pairs per exact-Jaccard bin:")
    print(f"{'method':<50} " + " ".join(f"{f'[{low:.2f},{min(high, 1):.2f})':>13}" for low, high in BINS))
    for row in rows:
        print(f"{row['method']:<50} " + " ".join(f"{f'{hit}/{total}':>13}" for hit, total in row["bins"]))
    default = rows[0]
    baseline = rows[len(variants)]
    print(f"\nratios: stage default recall@>=0.85 / datasketch default: "
          f"{default['recall@>=0.85'] / max(baseline['recall@>=0.85'], 1e-9):.2f}x; "
          f"removed documents whose survivor is unrelated (J < 0.5): {default['removed_far_from_survivor']}")
    met = default["recall@>=0.85"] >= 0.99 and default["joined_below_0.7"] == 0
    print(f"target recall >= 0.99 at Jaccard >= 0.85 and no pair below Jaccard 0.7 joined: "
          f"{'MET' if met else 'NOT MET'} (recall {default['recall@>=0.85']:.3f}, joined below 0.7 "
          f"{default['joined_below_0.7']})")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
