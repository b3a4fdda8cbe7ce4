"""The report's map places pairs by the vectors the embedding stages made, never embedding them again."""

import numpy as np

from pipelines.core.config import EmbeddingConfig
from pipelines.release.pair_map import build_map, map_entry, query_keys


def _entries():
    queries = ["espresso grind", "espresso tamp", "tea steeping", "green tea water"]
    return [map_entry({"id": f"p{n}", "dataset": "d", "query": q}, dropped=False) for n, q in enumerate(queries)]


def _vectors(entries, config, rows):
    keys = query_keys(entries, config.query_prefix)
    return {key: np.asarray(row, dtype=np.float16).tobytes() for key, row in zip(keys, rows)}


def test_points_follow_the_given_vectors_and_prefix():
    config = EmbeddingConfig(query_prefix="search_query: ")
    entries = _entries()
    # Two tight clusters on the first axis: the first PCA component must split them.
    rows = [[1, 0, 0.1], [1, 0, -0.1], [-1, 0, 0.1], [-1, 0, -0.1]]
    result = build_map(entries, config, _vectors(entries, config, rows))
    assert "query embeddings by all-MiniLM-L6-v2" in result["projection"]
    xs = [point["x"] for point in result["points"]]
    assert np.sign(xs[0]) == np.sign(xs[1]) != np.sign(xs[2]) == np.sign(xs[3])
    # Keys carry the prefix: vectors keyed without it are not found.
    unprefixed = _vectors(entries, EmbeddingConfig(), rows)
    assert "bag-of-words" in build_map(entries, config, unprefixed)["projection"]


def test_a_missing_vector_falls_back_to_bag_of_words_for_every_point():
    config = EmbeddingConfig()
    entries = _entries()
    vectors = _vectors(entries, config, [[1, 0], [0, 1], [1, 1], [0.5, 0.2]])
    del vectors[query_keys(entries[:1], "")[0]]
    result = build_map(entries, config, vectors)
    assert "some queries changed after the embedding stages" in result["projection"]
    assert len(result["points"]) == 4
    assert "the embedding stages did not run" in build_map(entries, None)["projection"]
