"""The limit: how close the whole build comes to the cost of the model alone.

Ratio = whole-process time of ``python -m pipelines.build --source news`` (every stage) on the AG News sample,
divided by the whole-process time of a script that only loads the same model and encodes the same unique
texts (every query and document that reached the embedding stages, with their prefixes) once, with the same
batch size. Target <= 1.25: everything but the model should be nearly free.

The two run side by side, alternating, ``--repeats`` times; the ratio uses the fastest run of each (the least
disturbed by other load on the machine). CPU time (user + system of the process and its children) is
reported next to wall time: on a shared machine it is the steadier of the two.

    python benchmarks/embedding_limit.py [--input CSV] [--backend torch|onnx] [--repeats 2]

Two baselines: plain sentence-transformers ``encode`` on torch (what the issue names), and this project's
encoder alone with the pipeline's configuration (same back end, same token-length batching), which isolates
what the pipeline adds around the model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DEFAULT_INPUT = Path(os.environ.get("PAIR_CURATION_DATA", REPO_ROOT.parent / "shared" / "data")) / "news" / \
    "ag_news_csv" / "test.csv"
EMBEDDING_STAGES = ("consistency", "negatives")


def timed(command: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a child process, its own children included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command[:4])} ... exited {result.returncode}; log {log}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _jsonl_gz(path: Path):
    with gzip.open(path, "rt", encoding="ascii") as handle:
        for line in handle:
            yield json.loads(line)


def embedded_texts(release: Path) -> tuple[list[str], dict]:
    """The distinct prefixed texts the embedding stages saw: kept pairs plus their rejects, and the config."""
    manifest = json.loads((release / "manifest.json").read_text())
    embedding = manifest["config"]["embedding"]
    if not manifest["config"]["release"]["reject_texts"]:
        raise SystemExit("the release was written without reject texts; the baseline needs them")
    texts: set[str] = set()
    rows = [row for shard in sorted(release.glob("data/*/shard-*.jsonl.gz")) for row in _jsonl_gz(shard)]
    rows += [row for shard in sorted(release.glob("rejects/*/rejects-*.jsonl.gz")) for row in _jsonl_gz(shard)
             if row["stage"] in EMBEDDING_STAGES]
    for row in rows:
        texts.add(embedding["query_prefix"] + row["query"])
        texts.add(embedding["document_prefix"] + row["document"])
    return sorted(texts), embedding


def baseline_main(texts_file: str, kind: str) -> None:
    """A baseline process: load the model, encode every text once, nothing else.

    ``plain``: sentence-transformers' own ``encode`` on torch (what a user would write). ``encoder``: this
    project's encoder with the pipeline's configuration (the same back end, batch order and batch size), so
    that the ratio against it isolates what the pipeline adds around the model."""
    payload = json.loads(Path(texts_file).read_text())
    embedding, texts = payload["embedding"], payload["texts"]
    if kind == "plain":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(payload["model_path"], device=embedding["device"])
        model.max_seq_length = embedding["max_seq_length"]
        vectors = model.encode(texts, batch_size=embedding["batch_size"], normalize_embeddings=True,
                               show_progress_bar=False)
    else:
        from pipelines.config import EmbeddingConfig
        from pipelines.embedding import encode_texts

        vectors = encode_texts(texts, EmbeddingConfig(**embedding))
    print(f"encoded {len(vectors)} texts, dimension {len(vectors[0])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(DEFAULT_INPUT))
    parser.add_argument("--backend", choices=["torch", "onnx"], default=None,
                        help="override embedding.backend (default: the news config's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline:
        baseline_main(*args.baseline)
        return 0

    work = Path(tempfile.mkdtemp(prefix="embedding-limit-"))
    build = [sys.executable, "-m", "pipelines.build", "--source", "news", "--input", args.input]
    if args.backend:
        build += ["--set", f"embedding.backend={args.backend}"]
    texts_file = work / "texts.json"
    kinds = ("plain", "encoder")
    runs: dict[str, list[tuple[float, float]]] = {"pipeline": [], "plain": [], "encoder": []}
    for repeat in range(args.repeats):
        release = work / f"release-{repeat}"
        runs["pipeline"].append(timed(build + ["--output", str(release)], work / f"build-{repeat}.log"))
        if repeat == 0:
            from pipelines.embedding import resolve_model_path

            texts, embedding = embedded_texts(release)
            texts_file.write_text(json.dumps({"texts": texts, "embedding": embedding,
                                              "model_path": resolve_model_path(embedding["model"])}))
        for kind in kinds:
            command = [sys.executable, str(Path(__file__).resolve()), "--baseline", str(texts_file), kind]
            runs[kind].append(timed(command, work / f"baseline-{kind}-{repeat}.log"))
        print(f"run {repeat + 1}: " + ", ".join(f"{name} {runs[name][-1][0]:.1f} s wall / {runs[name][-1][1]:.1f} s CPU"
                                                for name in runs), flush=True)

    identical = all((work / "release-0" / name).read_bytes() == (work / f"release-{r}" / name).read_bytes()
                    for r in range(1, args.repeats) for name in ("manifest.json",))
    best = {name: (min(w for w, _ in values), min(c for _, c in values)) for name, values in runs.items()}
    print(f"\nAG News sample: {len(texts)} unique texts, model {embedding['model']}, pipeline backend "
          f"{embedding['backend']}, batch size {embedding['batch_size']}; fastest of {args.repeats} runs each")
    labels = {"pipeline": "python -m pipelines.build (all stages)",
              "plain": "model alone: sentence-transformers encode (torch)",
              "encoder": f"model alone: our encoder ({embedding['backend']})"}
    for name, (wall, cpu) in best.items():
        print(f"  {labels[name]:52s} {wall:7.1f} s wall {cpu:7.1f} s CPU")
    for kind in kinds:
        ratio = best["pipeline"][0] / best[kind][0]
        print(f"  limit ratio vs {labels[kind].split(': ')[1]:32s} {ratio:6.3f} wall "
              f"{best['pipeline'][1] / best[kind][1]:6.3f} CPU   target <= 1.25: "
              f"{'met' if ratio <= 1.25 else 'NOT met'}")
    if args.repeats > 1:
        print(f"  manifests (with every shard's sha256) of the {args.repeats} builds byte-identical: {identical}")
    print(f"  work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
