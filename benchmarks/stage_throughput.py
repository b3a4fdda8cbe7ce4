"""Per-stage throughput, shuffle volume and peak memory of one build, measured by Beam's own runner.

    python benchmarks/stage_throughput.py --source stackexchange \\
        --input ../shared/data/stackexchange/cardano.stackexchange.com [--skip STAGE ...] [--set K=V ...] \\
        [--json results.json]

Takes the build's own arguments (``pipelines.build``: the same plan and graph), and runs the graph on Beam's
portable FnApiRunner in one process with one worker thread, so each transform's execution time is time on
one core. From the runner's monitoring data:

- time per stage: the sum of ``ptransform_execution_time`` over the stage's transforms (its label and all
  below it: ``normalize/...``); pairs per second per core = pairs into the stage / that time;
- shuffle volume per stage: for every GroupByKey (CoGroupByKey, Reshuffle) of the stage, the encoded bytes
  of its input (sampled mean element size x element count, as the runner samples them); combiner
  GroupByKeys are listed apart, since runners pre-combine them (their real shuffle is far smaller);
- side inputs: the encoded bytes of every PCollection read as a side input (broadcast to each worker);
- embeddings per second: texts embedded (the stage's ``texts_embedded`` counter) / time of the encoding step;
- peak RSS of this process (the whole in-process run: runner buffers included).

The release is written to a temporary folder (or --output) and the funnel is read back from its manifest.

    python benchmarks/stage_throughput.py --faiss-block 25000 50000 [--json results.json]

measures one consistency + negatives block (``filters.consistency.decide_block``, default configuration) of N
pairs, each size in a fresh process: wall time, queries per second, and the process's peak RSS above what it
held before the block (the memory one block needs on a worker). Vectors are synthetic (384 dimensions, float16
as they are shuffled; each query near its own document so that most pairs are kept and mined), which is all
the search and the decisions depend on for time and memory. Flat search is O(N^2) per block: time per
query grows with N, memory per pair stays constant.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

GBK_URN = "beam:transform:group_by_key:v1"
COMBINE_URN = "beam:transform:combine_per_key:v1"
ELEMENT_COUNT = "beam:metric:element_count:v1"
SAMPLED_BYTES = "beam:metric:sampled_byte_size:v1"
EXECUTION_MSECS = "beam:metric:ptransform_execution_time:total_msecs:v1"
# Graph labels of the stages (pipelines.graph.stage_transforms) -> their funnel stage.
STAGE_FUNNEL = {"Read": "read", "normalize": "normalize", "exact_dedup": "exact_dedup", "minhash": "minhash",
                "embedding": "consistency"}


def top_label(name: str) -> str:
    return name.split("/", 1)[0]


def group_of(label: str) -> str:
    """Stages keep their label; everything after them (shards, indexes, card, report, manifest) is 'release'."""
    return label if label in STAGE_FUNNEL else "release"


def _recording_runner():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    class RecordingRunner(FnApiRunner):
        """The FnApiRunner, keeping the pipeline proto it runs (to map PCollections to transforms)."""

        def run_via_runner_api(self, pipeline_proto, options):
            self.proto = pipeline_proto
            return super().run_via_runner_api(pipeline_proto, options)

    return RecordingRunner()


def pcollection_sizes(monitoring_infos) -> dict[str, dict[str, float]]:
    """PCollection id -> {"elements", "bytes"} (bytes: sampled mean encoded size x element count)."""
    from apache_beam.metrics.monitoring_infos import extract_counter_value, extract_distribution

    counts: dict[str, int] = defaultdict(int)
    sampled: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # [samples, bytes]
    for info in monitoring_infos:
        pcollection = info.labels.get("PCOLLECTION")
        if not pcollection:
            continue
        if info.urn == ELEMENT_COUNT:
            counts[pcollection] += extract_counter_value(info)
        elif info.urn == SAMPLED_BYTES:
            samples, total, _, _ = extract_distribution(info)
            sampled[pcollection][0] += samples
            sampled[pcollection][1] += total
    sizes = {}
    for pcollection, elements in counts.items():
        samples, total = sampled.get(pcollection, (0, 0))
        mean = total / samples if samples else 0.0
        sizes[pcollection] = {"elements": elements, "bytes": mean * elements}
    return sizes


def shuffles(proto, sizes) -> list[dict]:
    """Every GroupByKey of the graph with the encoded size of what goes into it."""
    transforms = proto.components.transforms
    inside_combine = set()
    for transform in transforms.values():
        if transform.spec.urn == COMBINE_URN:
            inside_combine.update(transforms[child].unique_name for child in transform.subtransforms)
    found = []
    for transform in transforms.values():
        if transform.spec.urn != GBK_URN:
            continue
        (pcollection,) = transform.inputs.values()
        size = sizes.get(pcollection, {"elements": 0, "bytes": 0.0})
        found.append({"transform": transform.unique_name, "group": group_of(top_label(transform.unique_name)),
                      "combiner": transform.unique_name in inside_combine, **size})
    return sorted(found, key=lambda item: -item["bytes"])


def side_inputs(proto, sizes) -> list[dict]:
    from apache_beam.portability.api import beam_runner_api_pb2

    found = []
    for transform in proto.components.transforms.values():
        if transform.spec.urn != "beam:transform:pardo:v1":
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        for tag in payload.side_inputs:
            pcollection = transform.inputs[tag]
            size = sizes.get(pcollection, {"elements": 0, "bytes": 0.0})
            found.append({"transform": transform.unique_name, "group": group_of(top_label(transform.unique_name)),
                          **size})
    return sorted(found, key=lambda item: -item["bytes"])


def execution_seconds(monitoring_infos) -> dict[str, float]:
    """Transform unique name -> seconds spent in it (summed over bundles)."""
    from apache_beam.metrics.monitoring_infos import extract_counter_value

    seconds: dict[str, float] = defaultdict(float)
    for info in monitoring_infos:
        if info.urn == EXECUTION_MSECS and info.labels.get("PTRANSFORM"):
            seconds[info.labels["PTRANSFORM"]] += extract_counter_value(info) / 1000.0
    return seconds


def user_counter(result, namespace: str, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(name))["counters"]
    return sum(counter.committed or 0 for counter in found)


def measure(build_argv: list[str]) -> dict:
    import apache_beam as beam

    from pipelines.build import make_parser, pipeline_options, plan_build
    from pipelines.graph import build_graph

    args, beam_args = make_parser().parse_known_args(build_argv)
    scratch = None
    if not args.output:
        scratch = tempfile.TemporaryDirectory(prefix="stage-throughput-")
        args.output = scratch.name
    args.overwrite = True
    plan, described = plan_build(args)
    options = pipeline_options(beam_args + ["--direct_num_workers", "1", "--direct_running_mode", "in_memory"])
    runner = _recording_runner()
    cpu_before = os.times()
    started = time.perf_counter()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_graph(pipeline, plan)
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - started
    cpu_after = os.times()
    monitoring = list(result.monitoring_infos())

    manifest = json.loads(Path(args.output, "manifest.json").read_text())
    funnel = {row["stage"]: row for row in manifest["funnel"]["total"]}
    published = sum(summary["rows"] for summary in manifest["datasets"].values())
    pairs_read = funnel["read"]["out"]

    seconds = execution_seconds(monitoring)
    sizes = pcollection_sizes(monitoring)
    shuffle_list = shuffles(runner.proto, sizes)
    side_list = side_inputs(runner.proto, sizes)

    groups = [label for label in STAGE_FUNNEL if label == "Read" or label in
              {top_label(name) for name in seconds}] + ["release"]
    stages = []
    for group in groups:
        group_seconds = sum(s for name, s in seconds.items() if group_of(top_label(name)) == group)
        if group == "Read":
            pairs_in = pairs_read  # pairs made by the reader
        elif group == "release":
            pairs_in = published
        else:
            stage = STAGE_FUNNEL[group]
            if stage == "consistency" and stage not in funnel:
                stage = "negatives"
            pairs_in = funnel[stage]["in"]
        shuffled = sum(item["bytes"] for item in shuffle_list if item["group"] == group and not item["combiner"])
        broadcast = sum(item["bytes"] for item in side_list if item["group"] == group)
        stages.append({"stage": group, "pairs_in": pairs_in, "seconds": round(group_seconds, 2),
                       "pairs_per_s_per_core": round(pairs_in / group_seconds, 1) if group_seconds else None,
                       "shuffle_bytes": round(shuffled), "shuffle_bytes_per_pair": round(shuffled / pairs_read, 1)
                       if pairs_read else None, "side_input_bytes": round(broadcast)})

    embedding = None
    embedded = user_counter(result, "consistency", "texts_embedded")
    if embedded:
        encode_seconds = sum(s for name, s in seconds.items() if name.startswith("embedding/Embed/"))
        embedding = {"texts": embedded, "seconds": round(encode_seconds, 2),
                     "texts_per_s": round(embedded / encode_seconds, 1) if encode_seconds else None}

    input_bytes = sum(item["bytes"] for item in described)
    measured = {
        "argv": build_argv, "input_bytes": input_bytes, "pairs_read": pairs_read, "pairs_published": published,
        "wall_s": round(wall, 2),
        "cpu_s": round((cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system), 2),
        "transform_seconds_total": round(sum(seconds.values()), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stages": stages, "embedding": embedding,
        "shuffle_bytes_per_pair_total": round(sum(i["bytes"] for i in shuffle_list if not i["combiner"])
                                              / pairs_read, 1) if pairs_read else None,
        "largest_shuffles": [{k: (round(v) if isinstance(v, float) else v) for k, v in item.items()}
                             for item in shuffle_list[:12]],
        "largest_side_inputs": [{k: (round(v) if isinstance(v, float) else v) for k, v in item.items()}
                                for item in side_list[:6]],
    }
    if scratch is not None:
        scratch.cleanup()
    return measured


def print_report(measured: dict) -> None:
    print(f"input {measured['input_bytes']:,} bytes -> {measured['pairs_read']:,} pairs read -> "
          f"{measured['pairs_published']:,} published; wall {measured['wall_s']} s, CPU {measured['cpu_s']} s, "
          f"in transforms {measured['transform_seconds_total']} s, peak RSS {measured['peak_rss_mb']} MB")
    print(f"{'stage':<12} {'pairs in':>9} {'seconds':>8} {'pairs/s/core':>13} {'shuffle B/pair':>15} "
          f"{'side-input B':>13}")
    for row in measured["stages"]:
        rate = row["pairs_per_s_per_core"] if row["pairs_per_s_per_core"] is not None else "-"
        print(f"{row['stage']:<12} {row['pairs_in']:>9,} {row['seconds']:>8} {rate:>13} "
              f"{row['shuffle_bytes_per_pair']:>15} {row['side_input_bytes']:>13,}")
    print(f"shuffle per pair read, all stages: {measured['shuffle_bytes_per_pair_total']} bytes "
          "(combiner inputs excluded: runners pre-combine them)")
    if measured["embedding"]:
        e = measured["embedding"]
        print(f"embedding: {e['texts']:,} texts in {e['seconds']} s = {e['texts_per_s']} texts/s on one core")
    print("largest shuffles (encoded bytes into the GroupByKey):")
    for item in measured["largest_shuffles"]:
        flag = " (combiner)" if item["combiner"] else ""
        print(f"  {item['bytes']:>12,} B {item['elements']:>8,} el  {item['transform']}{flag}")
    print("largest side inputs:")
    for item in measured["largest_side_inputs"]:
        print(f"  {item['bytes']:>12,} B {item['elements']:>8,} el  {item['transform']}")


def faiss_block_child(size: int) -> dict:
    """In this (fresh) process: build ``size`` members, decide the block, report time and memory."""
    import numpy as np

    from filters.consistency import BlockMember, decide_block
    from pipelines.core.config import ConsistencyConfig, NegativesConfig

    generator = np.random.default_rng(size)
    dimension = 384
    documents = generator.standard_normal((size, dimension)).astype(np.float32)
    documents /= np.linalg.norm(documents, axis=1, keepdims=True)
    queries = documents + 0.6 * generator.standard_normal((size, dimension)).astype(np.float32) / dimension ** 0.5
    members = [BlockMember(f"{row:032x}", f"q{row:031x}", f"query {row}", f"d{row:031x}", f"document {row}",
                           queries[row].astype(np.float16), documents[row].astype(np.float16))
               for row in range(size)]
    del documents, queries
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import gc

    gc.collect()
    current_kb = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])
    started = time.perf_counter()
    result = decide_block(members, ConsistencyConfig(), NegativesConfig())
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = sum(decision.kept for decision in result.decisions)
    return {"pairs": size, "index": result.index, "seconds": round(seconds, 2),
            "queries_per_s": round(result.queries / seconds, 1), "kept": kept,
            "members_mb": round(current_kb / 1024, 1),
            "block_peak_above_members_mb": round((peak_kb - max(current_kb, 0)) / 1024, 1),
            "process_peak_mb": round(max(peak_kb, before_kb) / 1024, 1)}


def faiss_blocks(sizes: list[int]) -> list[dict]:
    import subprocess

    results = []
    for size in sizes:
        completed = subprocess.run([sys.executable, __file__, "--faiss-block-child", str(size)], check=True,
                                   capture_output=True, text=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(f"{'pairs':>8} {'index':>6} {'seconds':>8} {'queries/s':>10} {'kept':>8} {'process peak MB':>16} "
          f"{'block MB':>9} {'block KB/pair':>14}")
    for row in results:
        per_pair = row["block_peak_above_members_mb"] * 1024 / row["pairs"]
        row["block_kb_per_pair"] = round(per_pair, 2)
        print(f"{row['pairs']:>8,} {row['index']:>6} {row['seconds']:>8} {row['queries_per_s']:>10} "
              f"{row['kept']:>8,} {row['process_peak_mb']:>16} {row['block_peak_above_members_mb']:>9} "
              f"{per_pair:>14.2f}")
    print("block MB: peak RSS during decide_block above the RSS before it (members already built).")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    json_path = None
    if "--json" in argv:
        index = argv.index("--json")
        json_path = Path(argv[index + 1])
        del argv[index:index + 2]
    if argv[:1] == ["--faiss-block-child"]:
        print(json.dumps(faiss_block_child(int(argv[1]))))
        return 0
    if argv[:1] == ["--faiss-block"]:
        results = faiss_blocks([int(value) for value in argv[1:]])
        if json_path:
            json_path.write_text(json.dumps(results, indent=1) + "\n")
        return 0
    measured = measure(argv)
    print_report(measured)
    if json_path:
        json_path.write_text(json.dumps(measured, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
