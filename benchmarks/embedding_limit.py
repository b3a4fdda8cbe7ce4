"""The limit, and the decisions: whole build against the model alone, and against a full-precision build.

For each sample (the README's main job on the cardano StackExchange dump, the slice of it the main job builds
when given no input (``bundled``), and the AG News test set), side by side in one run, each a separate
process timed from start to exit (model load included):

- ``build``: ``python -m pipelines.build`` with the default settings, all stages;
- ``sentence-transformers``: a script that only loads the same model with sentence-transformers (torch) and
  encodes the same unique texts (every query and document that reached the embedding stages, with their
  prefixes) once, with the same batch size: what a user would write;
- ``encoder``: the same texts through this project's encoder with the build's configuration alone, which
  isolates what the pipeline adds around the model;
- ``torch build``: the build with ``--set embedding.backend=torch`` (full precision, the reference), and any
  ``--variant KEY=VALUE[,KEY=VALUE]`` builds (e.g. ``embedding.backend=onnx-int8``).

Reported per sample: wall and CPU seconds (user + system of the process and its children, from
``resource.getrusage``: on a shared machine CPU time is the steadier of the two), each build's ratio to
sentence-transformers' encode, and each build's decisions against the torch build: the Jaccard of the kept
pair ids, and the share of the reference's negatives (of pairs kept by both) that stay the same.

    python benchmarks/embedding_limit.py [--samples cardano bundled agnews] [--repeats 1] [--variant KEY=VALUE ...]

With ``--repeats N`` the default build and the two encoders run N times, alternating, and the fastest run of
each is reported; the manifests of the repeated default builds are compared byte for byte.
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
DATA = Path(os.environ.get("PAIR_CURATION_DATA", REPO_ROOT.parent / "shared" / "data"))
SAMPLES = {
    # The slice the README's main job builds when given no --input (ships with the project).
    "bundled": ("stackexchange", REPO_ROOT / "sources" / "samples" / "stackexchange" / "cardano.stackexchange.com"),
    "cardano": ("stackexchange", DATA / "stackexchange" / "cardano.stackexchange.com"),
    "agnews": ("news", DATA / "news" / "ag_news_csv" / "test.csv"),
}
EMBEDDING_STAGES = ("consistency", "negatives")
REFERENCE = "embedding.backend=torch"


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
        raise SystemExit(f"{' '.join(command[:6])} ... exited {result.returncode}; log {log}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _jsonl_gz(path: Path):
    with gzip.open(path, "rt", encoding="ascii") as handle:
        for line in handle:
            yield json.loads(line)


def kept_pairs(release: Path) -> dict[str, list[str]]:
    """Kept pair id -> its negatives, over every dataset of a release."""
    return {row["id"]: list(row.get("negatives") or []) for shard in sorted(release.glob("data/*/shard-*.jsonl.gz"))
            for row in _jsonl_gz(shard)}


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


def agreement(reference: dict[str, list[str]], other: dict[str, list[str]]) -> tuple[float, float]:
    """(Jaccard of the kept ids, share of the reference's negatives unchanged among pairs kept by both)."""
    union = reference.keys() | other.keys()
    both = reference.keys() & other.keys()
    jaccard = len(both) / len(union) if union else 1.0
    negatives = sum(len(reference[pair_id]) for pair_id in both)
    same = sum(len(set(reference[pair_id]) & set(other[pair_id])) for pair_id in both)
    return jaccard, (same / negatives if negatives else 1.0)


def baseline_main(texts_file: str, kind: str) -> None:
    """A baseline process: load the model, encode every text once, nothing else.

    ``sentence-transformers``: its own ``encode`` on torch (what a user would write). ``encoder``: this
    project's encoder with the build's configuration (the same back end, batch order and batch size)."""
    payload = json.loads(Path(texts_file).read_text())
    embedding, texts = payload["embedding"], payload["texts"]
    if kind == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(payload["model_path"], device=embedding["device"])
        model.max_seq_length = embedding["max_seq_length"]
        vectors = model.encode(texts, batch_size=embedding["batch_size"], normalize_embeddings=True,
                               show_progress_bar=False)
    else:
        from pipelines.core.config import EmbeddingConfig
        from filters.embedding import encode_texts

        vectors = encode_texts(texts, EmbeddingConfig(**embedding))
    print(f"encoded {len(vectors)} texts, dimension {len(vectors[0])}")


def prepare_onnx_files(variants: list[str]) -> None:
    """Export (and quantize) the model before any timing: made once per machine and weights, then cached."""
    from pipelines.core.config import EmbeddingConfig
    from filters.embedding import _local_model_dir, onnx_model_file

    backends = {"onnx"} | {setting.split("=", 1)[1] for variant in variants for setting in variant.split(",")
                           if setting.startswith("embedding.backend=")}
    for backend in sorted(backend for backend in backends if backend.startswith("onnx")):
        config = EmbeddingConfig(backend=backend)
        onnx_model_file(_local_model_dir(config), config)


def run_sample(name: str, args, work: Path) -> None:
    source, data = SAMPLES[name]
    build = [sys.executable, "-m", "pipelines.build", "--source", source, "--input", str(data)]
    texts_file = work / f"{name}-texts.json"
    times: dict[str, list[tuple[float, float]]] = {"build": [], "sentence-transformers": [], "encoder": []}
    releases: dict[str, Path] = {}
    for repeat in range(args.repeats):
        release = work / f"{name}-build-{repeat}"
        times["build"].append(timed(build + ["--output", str(release)], work / f"{name}-build-{repeat}.log"))
        releases.setdefault("build", release)
        if repeat == 0:
            from filters.embedding import resolve_model_path

            texts, embedding = embedded_texts(release)
            texts_file.write_text(json.dumps({"texts": texts, "embedding": embedding,
                                              "model_path": resolve_model_path(embedding["model"])}))
        for kind in ("sentence-transformers", "encoder"):
            command = [sys.executable, str(Path(__file__).resolve()), "--baseline", str(texts_file), kind]
            times[kind].append(timed(command, work / f"{name}-{kind}-{repeat}.log"))
        print(f"{name} run {repeat + 1}: " + ", ".join(
            f"{kind} {values[-1][0]:.1f} s wall / {values[-1][1]:.1f} s CPU" for kind, values in times.items()),
            flush=True)
    for variant in [REFERENCE] + list(args.variant):
        label = f"build {variant}"
        release = work / f"{name}-{variant.replace('=', '-').replace(',', '_')}"
        sets = [item for setting in variant.split(",") for item in ("--set", setting)]
        times[label] = [timed(build + sets + ["--output", str(release)], work / f"{release.name}.log")]
        releases[label] = release
        print(f"{name} {label}: {times[label][0][0]:.1f} s wall / {times[label][0][1]:.1f} s CPU", flush=True)

    best = {kind: (min(w for w, _ in values), min(c for _, c in values)) for kind, values in times.items()}
    encode_wall, encode_cpu = best["sentence-transformers"]
    reference = kept_pairs(releases[f"build {REFERENCE}"])
    print(f"\n{name}: {len(texts)} unique texts, model {embedding['model']}, default backend "
          f"{embedding['backend']}, batch size {embedding['batch_size']}, max_seq_length "
          f"{embedding['max_seq_length']}; fastest of {args.repeats} run(s) of build and encoders")
    print(f"  {'':44s}{'wall s':>8s}{'CPU s':>8s}{'/ST wall':>9s}{'/ST CPU':>9s}{'kept':>7s}{'Jaccard':>9s}"
          f"{'negs same':>10s}")
    for kind, (wall, cpu) in best.items():
        line = f"  {kind:44s}{wall:8.1f}{cpu:8.1f}{wall / encode_wall:9.3f}{cpu / encode_cpu:9.3f}"
        if kind in releases:
            kept = kept_pairs(releases[kind])
            jaccard, negatives = agreement(reference, kept)
            line += f"{len(kept):7d}{jaccard:9.4f}{negatives:10.4f}"
        print(line)
    build_wall, build_cpu = best["build"]
    print(f"  whole default build / sentence-transformers encode: {build_wall / encode_wall:.3f} wall, "
          f"{build_cpu / encode_cpu:.3f} CPU (target <= 0.5); / our encoder alone: "
          f"{build_wall / best['encoder'][0]:.3f} wall, {build_cpu / best['encoder'][1]:.3f} CPU")
    if args.repeats > 1:
        first = (work / f"{name}-build-0" / "manifest.json").read_bytes()
        identical = all((work / f"{name}-build-{r}" / "manifest.json").read_bytes() == first
                        for r in range(1, args.repeats))
        print(f"  manifests (with every shard's sha256) of the {args.repeats} default builds byte-identical: "
              f"{identical}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", nargs="+", choices=sorted(SAMPLES), default=["cardano", "agnews"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[],
                        help="another build to compare, as --set values: KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--baseline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline:
        baseline_main(*args.baseline)
        return 0
    work = Path(tempfile.mkdtemp(prefix="embedding-limit-"))
    prepare_onnx_files(args.variant)
    for name in args.samples:
        run_sample(name, args, work)
    print(f"  work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
