"""Peak memory (RSS) of the minhash stage for 1x and 4x the input, each in a fresh process.

    python benchmarks/minhash_memory.py [--pairs N]

The input is N (then 4N) real pairs taken round-robin from every sample source in ../shared/data (or
$PAIR_CURATION_DATA); the long-text sources (BBC, XSum) run out first, so the 4x input holds relatively more
short texts: its size as JSON is printed next to the pair count. The stage runs on Beam's in-process DirectRunner (which
keeps every intermediate collection in memory: an upper bound for a distributed runner, where each worker
holds one bundle at a time). Printed: RSS after imports, the input's size as JSON lines, peak RSS, the growth per 1,000 pairs, and the ratio
of the 4x growth to the 1x growth (4.0 = linear).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minhash_speed as corpus  # noqa: E402  (the real-text readers)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def real_pairs(count: int) -> list[dict]:
    from pipelines.core.records import new_pair

    sources = corpus.real_texts()
    names = sorted(sources)
    pairs, position = [], 0
    while len(pairs) < count:
        added = False
        for name in names:
            if position < len(sources[name]) and len(pairs) < count:
                headline, _, body = sources[name][position].partition("\n")
                pairs.append(new_pair(dataset=name, source=name, query=headline, document=body or headline,
                                      provenance={"record": f"{name}/{position}"}))
                added = True
        if not added:
            break
        position += 1
    return pairs


def child(count: int) -> None:
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

    from filters.minhash import MinHashDedup
    from pipelines.core.records import RAW_REJECT_CHARS, RejectPolicy
    from pipelines.core.config import MinHashConfig

    baseline = rss_mb()
    pairs = real_pairs(count)
    input_mb = sum(len(json.dumps(pair)) for pair in pairs) / 2**20
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        with BeamTestPipeline() as pipeline:
            result = pipeline | beam.Create(pairs, reshuffle=False) | MinHashDedup(
                MinHashConfig(), RejectPolicy(keep_texts=True, raw_chars=RAW_REJECT_CHARS))
            (result["pairs"] | "CountKept" >> beam.combiners.Count.Globally()
             | "WriteKept" >> beam.io.WriteToText(f"{folder}/kept", shard_name_template=""))
            (result["report"] | "Json" >> beam.Map(json.dumps)
             | "WriteReport" >> beam.io.WriteToText(f"{folder}/report", shard_name_template=""))
        kept = int(Path(folder, "kept").read_text())
        report = json.loads(Path(folder, "report").read_text())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"pairs": len(pairs), "kept": kept, "removed": report["removed"], "seconds": seconds,
                      "baseline_mb": baseline, "input_mb": input_mb, "peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4000, help="pairs in the 1x input")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    rows = []
    for factor in (1, 4):
        output = subprocess.run([sys.executable, __file__, "--child", str(args.pairs * factor)],
                                check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
        row = json.loads(output.strip().splitlines()[-1])
        row["factor"] = factor
        rows.append(row)
    print(f"{'input':>6} {'pairs':>7} {'kept':>7} {'removed':>7} {'seconds':>8} {'RSS after imports':>18} "
          f"{'input as JSON':>14} {'peak RSS':>9} {'growth/1k pairs':>16}")
    for row in rows:
        growth = row["peak_mb"] - row["baseline_mb"]
        print(f"{row['factor']:>5}x {row['pairs']:>7} {row['kept']:>7} {row['removed']:>7} {row['seconds']:>8.1f} "
              f"{row['baseline_mb']:>15.0f} MB {row['input_mb']:>11.1f} MB {row['peak_mb']:>6.0f} MB "
              f"{growth / row['pairs'] * 1000:>13.1f} MB")
    small, large = rows
    ratio = (large["peak_mb"] - large["baseline_mb"]) / max(small["peak_mb"] - small["baseline_mb"], 1e-9)
    print(f"\nratios: peak RSS 4x / 1x = {large['peak_mb'] / small['peak_mb']:.2f}; growth above imports "
          f"4x / 1x = {ratio:.2f} (input: {large['pairs'] / small['pairs']:.1f}x the pairs, "
          f"{large['input_mb'] / small['input_mb']:.1f}x the bytes)")


if __name__ == "__main__":
    main()
