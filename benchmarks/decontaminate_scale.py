"""Decontamination at scale: the Beam stage (n-gram hashes joined by key) beside a plain Python set baseline.

    PYTHONPATH=. python benchmarks/decontaminate_scale.py [--eval-ngrams 1000000] [--pairs 20000]

Synthetic evaluation texts (random words, 62 words each, so 50 13-grams a text) add up to --eval-ngrams
n-grams; --pairs pairs (query + ~60-word document) of which 1% copy a 13-word span of an evaluation text and
1% copy a whole evaluation query. Each method runs in its own process; printed: wall time, peak resident memory
(ru_maxrss of that process) and the contaminated pairs it found (the two must agree). The baseline holds every
evaluation n-gram string in one set in one process: what the Beam stage avoids (only 64-bit hashes are
shuffled, and no worker holds the evaluation set).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS_PER_EVAL = 62
NGRAM = 13


def make_data(folder: Path, eval_ngrams: int, pairs: int) -> tuple[Path, Path]:
    rng = random.Random(7)
    vocabulary = [f"w{n}" for n in range(50_000)]
    texts = eval_ngrams // (WORDS_PER_EVAL - NGRAM + 1)
    eval_path = folder / "eval.jsonl"
    eval_rows = []
    with eval_path.open("w") as handle:
        for n in range(texts):
            text = " ".join(rng.choices(vocabulary, k=WORDS_PER_EVAL))
            eval_rows.append(text)
            handle.write(json.dumps({"text": text}) + "\n")
            handle.write(json.dumps({"text": f"short eval query {n}"}) + "\n")
    pairs_path = folder / "pairs.jsonl"
    with pairs_path.open("w") as handle:
        for n in range(pairs):
            document = " ".join(rng.choices(vocabulary, k=60))
            query = f"question about {' '.join(rng.choices(vocabulary, k=6))}"
            if n % 100 == 1:  # a 13-word span of an evaluation text inside the document
                words = rng.choice(eval_rows).split()
                start = rng.randrange(0, WORDS_PER_EVAL - NGRAM)
                document = document + " " + " ".join(words[start:start + NGRAM])
            elif n % 100 == 2:  # the query is an evaluation query
                query = f"short eval query {rng.randrange(texts)}"
            handle.write(json.dumps({"id": f"p{n}", "query": query, "document": document}) + "\n")
    return eval_path, pairs_path


def run_set_baseline(eval_path: Path, pairs_path: Path) -> int:
    from filters.decontaminate import normalized_words

    grams: set[str] = set()
    wholes: set[str] = set()
    with eval_path.open() as handle:
        for line in handle:
            words = normalized_words(json.loads(line)["text"])
            wholes.add(" ".join(words))
            for start in range(len(words) - NGRAM + 1):
                grams.add(" ".join(words[start:start + NGRAM]))
    found = 0
    with pairs_path.open() as handle:
        for line in handle:
            pair = json.loads(line)
            hit = False
            for field in ("query", "document"):
                words = normalized_words(pair[field])
                if " ".join(words) in wholes or any(" ".join(words[s:s + NGRAM]) in grams
                                                    for s in range(len(words) - NGRAM + 1)):
                    hit = True
            found += hit
    return found


def run_beam(eval_path: Path, pairs_path: Path) -> int:
    import apache_beam as beam

    from filters.decontaminate import Decontaminate
    from pipelines.core.config import DecontaminateConfig
    from pipelines.core.records import RejectPolicy

    config = DecontaminateConfig(enabled=True, inputs=[str(eval_path)], ngram=NGRAM, max_matches=10)
    policy = RejectPolicy(keep_texts=False, raw_chars=0)
    out = eval_path.parent / "beam_rejects"
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        pairs = (pipeline | beam.io.ReadFromText(str(pairs_path)) | beam.Map(json.loads)
                 | beam.Map(lambda p: {**p, "dataset": "d", "source": "s"}))
        result = pairs | Decontaminate(config, policy)
        (result["rejects"] | beam.combiners.Count.Globally() | beam.Map(str)
         | beam.io.WriteToText(str(out), num_shards=1, shard_name_template=""))
    return int(out.read_text().strip())


def child(method: str, eval_path: str, pairs_path: str) -> None:
    started = time.perf_counter()
    found = (run_beam if method == "beam" else run_set_baseline)(Path(eval_path), Path(pairs_path))
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "seconds": round(elapsed, 1), "peak_rss_mb": round(peak_mb),
                      "contaminated": found}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-ngrams", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        eval_path, pairs_path = make_data(Path(tmp), args.eval_ngrams, args.pairs)
        print(f"evaluation n-grams: {args.eval_ngrams:,}  pairs: {args.pairs:,}  "
              f"(planted: {sum(1 for n in range(args.pairs) if n % 100 in (1, 2)):,})")
        results = []
        for method in ("set", "beam"):
            line = subprocess.run([sys.executable, __file__, "--child", method, str(eval_path), str(pairs_path)],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(line))
            print(line)
        set_result, beam_result = results
        print(f"beam / set: time x{beam_result['seconds'] / max(set_result['seconds'], 0.1):.1f}, "
              f"peak memory x{beam_result['peak_rss_mb'] / max(set_result['peak_rss_mb'], 1):.2f}; "
              f"same findings: {beam_result['contaminated'] == set_result['contaminated']}")


if __name__ == "__main__":
    main()
