"""The map in report.html: up to MAX_POINTS pairs placed in 2-D, coloured by dataset, pairs the consistency
filter dropped drawn hollow. One inline SVG, one <circle> per plotted pair with a <title> (query and id) the
browser shows on hover; no scripts.

Which pairs: all when there are at most MAX_POINTS, else the MAX_POINTS smallest ids (ids are content hashes,
so this is a deterministic sample unbiased by content). Where: their query embeddings (the vectors the
embedding stages made, float16 as they travel; never embedded a second time) when those stages ran, otherwise
hashed bag-of-words vectors of the queries (words hashed into HASHED_DIMENSIONS buckets, counts, unit length);
either way projected on their first two principal components (numpy SVD of the centred vectors; each axis signed so its largest loading is positive, so the
picture does not flip between runs). Coordinates are rounded to 0.1 px.
"""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np
import xxhash
from threadpoolctl import threadpool_limits

from pipelines.core.records import content_hash

MAX_POINTS = 2000
HASHED_DIMENSIONS = 512
WIDTH, HEIGHT, MARGIN = 720.0, 480.0, 16.0
TITLE_QUERY_CHARS = 200
# Colour-blind-safe qualitative palette (Okabe-Ito), then repeated.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
_WORD = re.compile(r"\w+")


def map_entry(pair: dict[str, Any], dropped: bool) -> dict[str, Any]:
    """What the map keeps of a pair (kept, or rejected by the consistency filter)."""
    return {"id": pair["id"], "dataset": pair.get("dataset", ""), "query": pair.get("query", ""),
            "dropped": dropped}


def sample(entries: list[dict[str, Any]], limit: int = MAX_POINTS) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda entry: entry["id"])[:limit]


def hashed_bag_of_words(texts: list[str], dimensions: int = HASHED_DIMENSIONS) -> np.ndarray:
    vectors = np.zeros((len(texts), dimensions), dtype=np.float64)
    for row, text in enumerate(texts):
        for word in _WORD.findall(text.casefold()):
            vectors[row, xxhash.xxh64_intdigest(word.encode("utf-8", "surrogatepass")) % dimensions] += 1.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components (zeros where there are fewer than two points or no spread)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    # One BLAS thread: summation order then does not depend on the process's thread pools (set by whatever
    # ran before, e.g. FAISS or torch), so the same pairs give the same picture byte for byte.
    with threadpool_limits(limits=1):
        return _project_2d(vectors)


def _project_2d(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    axes = components[:2]
    if len(axes) < 2:
        axes = np.vstack([axes, np.zeros((2 - len(axes), vectors.shape[1]))])
    # The sign of a singular vector is arbitrary: make each axis's largest loading positive.
    for index, axis in enumerate(axes):
        if axis.size and axis[np.argmax(np.abs(axis))] < 0:
            axes[index] = -axis
    return centred @ axes.T


def query_keys(entries: list[dict[str, Any]], query_prefix: str) -> list[str]:
    """The text keys the embedding stages gave these entries' queries."""
    return [content_hash(query_prefix, entry["query"]) for entry in entries]


def build_map(entries: list[dict[str, Any]], embedding_config: Any | None,
              query_vectors: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The sampled entries -> {"projection": description, "points": [{id, dataset, query, dropped, x, y}]}.

    ``query_vectors``: text key -> float16 vector bytes, the vectors the embedding stages made (see
    ``query_keys``); the queries are not embedded again. When one is missing (a stage after the embedding
    stages changed a query), the whole map falls back to bag-of-words, so every point is placed alike."""
    chosen = sample(entries)
    queries = [entry["query"] for entry in chosen]
    vectors = None
    if embedding_config is not None and chosen:
        found = [(query_vectors or {}).get(key) for key in query_keys(chosen, embedding_config.query_prefix)]
        if all(vector is not None for vector in found):
            vectors = np.stack([np.frombuffer(vector, dtype=np.float16) for vector in found]).astype(np.float64)
            projection = (f"PCA (numpy SVD, first two components) of the query embeddings by "
                          f"{embedding_config.model}")
    if vectors is None:
        vectors = hashed_bag_of_words(queries)
        why = ("the embedding stages did not run" if embedding_config is None or not chosen
               else "some queries changed after the embedding stages")
        projection = (f"PCA (numpy SVD, first two components) of hashed bag-of-words vectors of the queries "
                      f"({HASHED_DIMENSIONS} buckets; {why})")
    coordinates = project_2d(vectors) if chosen else np.zeros((0, 2))
    points = [{**entry, "x": float(x), "y": float(y)} for entry, (x, y) in zip(chosen, coordinates)]
    return {"projection": projection, "points": points, "sampled": len(entries) > len(chosen),
            "candidates": len(entries)}


def _scale(values: list[float], low: float, high: float) -> list[float]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return [round((low + high) / 2, 1)] * len(values)
    return [round(low + (value - lo) / (hi - lo) * (high - low), 1) for value in values]


def render_svg(pair_map: dict[str, Any]) -> str:
    """The map as one inline SVG (deterministic text: sorted datasets, points in id order)."""
    points = pair_map["points"]
    datasets = sorted({point["dataset"] for point in points})
    colours = {dataset: PALETTE[index % len(PALETTE)] for index, dataset in enumerate(datasets)}
    legend_height = 18.0 * (len(datasets) + 1)
    xs = _scale([point["x"] for point in points], MARGIN, WIDTH - MARGIN)
    # SVG's y grows downwards: the second component upwards, as on a plot.
    ys = _scale([-point["y"] for point in points], MARGIN, HEIGHT - MARGIN)
    total_height = HEIGHT + legend_height
    parts = [f'<svg class="pair-map" xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0f}" '
             f'height="{total_height:.0f}" viewBox="0 0 {WIDTH:.0f} {total_height:.0f}" role="img" '
             f'aria-label="map of {len(points)} pairs">',
             f'<rect x="0" y="0" width="{WIDTH:.0f}" height="{HEIGHT:.0f}" fill="#fafafa" stroke="#ccc"/>']
    for point, x, y in zip(points, xs, ys):
        colour = colours[point["dataset"]]
        style = (f'fill="none" stroke="{colour}" stroke-width="1.2"' if point["dropped"]
                 else f'fill="{colour}" fill-opacity="0.75"')
        query = point["query"][:TITLE_QUERY_CHARS]
        status = " (dropped by consistency)" if point["dropped"] else ""
        title = html.escape(f"{query}\n{point['dataset']} {point['id']}{status}", quote=True)
        parts.append(f'<circle cx="{x}" cy="{y}" r="3" {style}><title>{title}</title></circle>')
    for index, dataset in enumerate(datasets):
        top = HEIGHT + 6 + 18 * index
        parts.append(f'<rect x="{MARGIN:.0f}" y="{top:.0f}" width="10" height="10" fill="{colours[dataset]}"/>'
                     f'<text x="{MARGIN + 16:.0f}" y="{top + 9:.0f}" font-size="12">{html.escape(dataset)}</text>')
    top = HEIGHT + 6 + 18 * len(datasets)
    parts.append(f'<rect x="{MARGIN:.0f}" y="{top:.0f}" width="10" height="10" fill="none" stroke="#555"/>'
                 f'<text x="{MARGIN + 16:.0f}" y="{top + 9:.0f}" font-size="12">hollow: dropped by the '
                 'consistency filter</text>')
    parts.append("</svg>")
    return "".join(parts)
