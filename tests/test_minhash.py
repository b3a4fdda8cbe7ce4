"""The `minhash` near-duplicate stage: kernel against datasketch, clustering methods, and the Beam stage on
real texts with planted near-duplicates."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import xxhash
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from filters import minhash_kernel as kernel
from filters.minhash import (DistributedComponents, LocalComponents, MinHashDedup, build_report,
                             decide_cluster, pair_problem, resolve_banding)
from pipelines.core.config import MinHashConfig
from pipelines.core.records import new_pair
from tests.helpers import KEEP_TEXTS

# ------------------------------------------------------------------------------------------------ helpers


def read_articles(shared_data: Path, limit: int) -> list[tuple[str, str]]:
    """(headline, body) of BBC business articles: long real texts."""
    articles = []
    for path in sorted((shared_data / "news" / "bbc" / "business").glob("*.txt"))[:limit]:
        text = path.read_text(encoding="utf-8", errors="replace")
        headline, _, body = text.partition("\n")
        articles.append((headline.strip(), " ".join(body.split())))
    return articles


def exact_pair_jaccard(a: str, b: str) -> float:
    return kernel.exact_jaccard(kernel.shingle_hashes(a, "word", 5), kernel.shingle_hashes(b, "word", 5))


def unrelated_articles(shared_data: Path, limit: int) -> list[tuple[str, str]]:
    """Articles with no natural near-duplicate among them (the BBC set has some: reprinted stories)."""
    articles = read_articles(shared_data, limit)
    shingle_sets = [kernel.shingle_hashes(h + "\n" + b, "word", 5) for h, b in articles]
    related = set()
    for i in range(len(articles)):
        for j in range(i + 1, len(articles)):
            if kernel.exact_jaccard(shingle_sets[i], shingle_sets[j]) > 0.3:
                related.update((i, j))
    return [article for index, article in enumerate(articles) if index not in related]


def light_edit(text: str, rng: random.Random, rate: float = 0.01) -> str:
    """Replace, delete or insert about ``rate`` of the words (at least one edit)."""
    words = text.split(" ")
    for _ in range(max(1, int(len(words) * rate))):
        position = rng.randrange(len(words))
        operation = rng.choice(("replace", "delete", "insert"))
        if operation == "replace":
            words[position] = rng.choice(("however", "reportedly", "analysts", "meanwhile"))
        elif operation == "delete" and len(words) > 10:
            del words[position]
        else:
            words.insert(position, rng.choice(("also", "still", "notably", "indeed")))
    return " ".join(words)


def make_pair(headline: str, body: str, ref: str, dataset: str = "bbc_title_body") -> dict:
    return new_pair(dataset=dataset, source="news", query=headline, document=body,
                    provenance={"record": ref, "input": "bbc/business", "license": "research"})


def planted_corpus(shared_data: Path, *, clusters: int = 12, base: int = 90, seed: int = 7):
    """Real articles; the first ``clusters`` get 1-3 light edits each. Returns (pairs, planted clusters as
    lists of ids, ids of the unrelated articles)."""
    articles = unrelated_articles(shared_data, base)
    rng = random.Random(seed)
    pairs, planted = [], []
    for index, (headline, body) in enumerate(articles):
        original = make_pair(headline, body, f"article-{index}")
        pairs.append(original)
        if index < clusters:
            members = [original]
            for copy in range(rng.randint(1, 3)):
                edited = make_pair(headline, light_edit(body, rng), f"article-{index}-copy-{copy}")
                members.append(edited)
            pairs.extend(members[1:])
            planted.append(members)
    unrelated = {pair["id"] for pair in pairs} - {pair["id"] for members in planted for pair in members}
    return pairs, planted, unrelated


def expected_survivor(members: list[dict]) -> str:
    return min(members, key=lambda pair: (-len(pair["document"]), pair["id"]))["id"]


def run_stage(pairs: list[dict], config: MinHashConfig, out_dir: Path, options=None):
    """Run the stage in a TestPipeline; its outputs come back through files (any runner can write them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with test_pipeline.TestPipeline(options=options) as pipeline:
        result = pipeline | beam.Create(pairs, reshuffle=False) | MinHashDedup(config, KEEP_TEXTS)
        for name in ("pairs", "rejects", "report"):
            (result[name]
             | f"Json{name}" >> beam.Map(lambda row: json.dumps(row, sort_keys=True))
             | f"Write{name}" >> beam.io.WriteToText(str(out_dir / name), shard_name_template=""))

    def read(name):
        lines = (out_dir / name).read_text(encoding="utf-8").splitlines()
        return sorted((json.loads(line) for line in lines), key=lambda row: row["id"] if "id" in row else "")

    report = read("report")
    assert len(report) == 1
    return read("pairs"), read("rejects"), report[0]


# ------------------------------------------------------------------------------------ kernel vs datasketch


@pytest.fixture(scope="module")
def real_texts(shared_data):
    articles = read_articles(shared_data, 25)
    questions = (shared_data / "quora" / "mini_quora_duplicate_questions.tsv").read_text(
        encoding="utf-8").splitlines()[1:15]
    extra = ["", "x", "Héllo, wörld! Straße ist groß — “quoted” 日本語のテキスト", "two words", "   ...   "]
    return [h + "\n" + b for h, b in articles] + questions + extra


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("kind,ngram", [("word", 5), ("word", 1), ("char", 9)])
@pytest.mark.parametrize("token_hash", ["sha1", "xxh32"])
def test_signatures_bit_identical_to_datasketch(real_texts, scheme, kind, ngram, token_hash):
    num_perm, seed = 96, 42
    signatures, hashes, counts = kernel.text_signatures(real_texts, kind=kind, ngram=ngram, num_perm=num_perm,
                                                        seed=seed, scheme=scheme, token_hash=token_hash)
    hashfunc = xxhash.xxh32_intdigest if token_hash == "xxh32" else None
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for index, text in enumerate(real_texts):
        reference = MinHash(num_perm=num_perm, seed=seed, scheme=scheme, hashfunc=hashfunc)
        tokens = kernel.shingles(text, kind, ngram)
        reference.update_batch(tokens)
        assert len(tokens) == counts[index]
        assert np.array_equal(hashes[offsets[index]:offsets[index + 1]],
                              np.array([reference.hashfunc(t) for t in tokens], dtype=np.uint32))
        assert np.array_equal(reference.hashvalues.astype(np.uint64), signatures[index].astype(np.uint64))
        # Loaded back into datasketch, our signature estimates like datasketch's own.
        ours = MinHash(seed=seed, hashvalues=signatures[index], scheme=scheme)
        assert ours.jaccard(reference) == 1.0


def test_permutations_match_datasketch():
    for scheme in ("affine32", "legacy"):
        reference = MinHash(num_perm=64, seed=3, scheme=scheme).permutations
        a, b = kernel.permutations(64, 3, scheme)
        assert np.array_equal(np.asarray(reference[0], dtype=np.uint64), a.astype(np.uint64))
        assert np.array_equal(np.asarray(reference[1], dtype=np.uint64), b.astype(np.uint64))


def test_documents_longer_than_a_chunk(shared_data):
    # Thousands of shingles cross the kernel's internal chunk boundaries; still equal to datasketch.
    long_text = " ".join(h + " " + b for h, b in read_articles(shared_data, 40))
    texts = ["short text here", long_text, "", long_text[:5000]]
    signatures, _, counts = kernel.text_signatures(texts, num_perm=128)
    assert counts[1] > 4 * 2048
    for text, signature in zip(texts, signatures):
        reference = MinHash(num_perm=128)
        reference.update_batch(kernel.shingles(text, "word", 5))
        assert np.array_equal(reference.hashvalues, signature)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
                max_size=6), st.sampled_from(["word", "char"]), st.integers(1, 6))
def test_batch_spans_equal_one_text_at_a_time(texts, kind, ngram):
    buffer, starts, ends, counts = kernel.batch_shingle_spans(texts, kind, ngram)
    cut = [buffer[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for index, text in enumerate(texts):
        assert cut[offsets[index]:offsets[index + 1]] == kernel.shingles(text, kind, ngram)
        canonical = kernel.canonical_text(text, kind)
        units = canonical.split(b" ") if kind == "word" else list(canonical.decode("utf-8"))
        units = [unit for unit in units if unit]
        expected = 0 if not canonical else max(1, len(units) - ngram + 1)
        assert counts[index] == expected


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(alphabet=st.characters(max_codepoint=127)),
                 st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)))))
def test_word_canonical_text_is_the_unicode_word_rule(text):
    # The byte-table fast paths give exactly the regex definition, for ASCII and any Unicode text.
    expected = re.sub(r"\W+", " ", text.casefold()).strip().encode("utf-8")
    assert kernel.canonical_text(text, "word") == expected


def test_word_shingles_ignore_case_and_punctuation():
    assert kernel.shingles("The cat, the HAT!", "word", 2) == [b"the cat", b"cat the", b"the hat"]
    assert kernel.shingles("Too short", "word", 5) == [b"too short"]
    assert kernel.shingles("ab  c", "char", 3) == [b"ab ", b"b c"]
    assert kernel.shingles("...", "word", 2) == []


# ---------------------------------------------------------------------------------- LSH and verification


def test_banding_derived_towards_recall():
    bands, rows = kernel.lsh_params(0.8, 128)
    assert (bands, rows) == (14, 9)
    # datasketch's balanced default (9 x 13) misses most pairs at the threshold; ours keeps pairs at +0.05.
    assert kernel.candidate_probability(0.8, 9, 13) < 0.5
    assert kernel.candidate_probability(0.85, bands, rows) > 0.97
    assert resolve_banding(MinHashConfig(bands=20, rows=6)) == (20, 6)
    assert resolve_banding(MinHashConfig(candidate_margin=0)) == (14, 9)
    # The default aims at threshold - 0.05: pairs at +0.05 are candidates 99.4% of the time.
    assert resolve_banding(MinHashConfig()) == (16, 8)
    assert kernel.candidate_probability(0.85, 16, 8) > 0.99


def test_band_hashes_separate_bands():
    signature = np.arange(128, dtype=np.uint32)
    digests = kernel.band_hashes(signature, 16, 8)
    assert len(digests) == 16 and len(set(digests)) == 16
    changed = signature.copy()
    changed[9] += 1  # row 9 lies in band 1
    assert [a == b for a, b in zip(digests, kernel.band_hashes(changed, 16, 8))] == [True, False] + [True] * 14


def test_bucket_edges_all_pairs_when_small_star_when_hot():
    assert kernel.bucket_edges(["c", "b", "a", "b"], all_pairs_max=3) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert kernel.bucket_edges(["d", "b", "c", "a"], all_pairs_max=3) == [("a", "b"), ("a", "c"), ("a", "d")]
    assert kernel.bucket_edges(["only"]) == []
    hot = kernel.bucket_edges([f"{i:05d}" for i in range(5000)])
    assert len(hot) == 4999  # linear, not 12.5M all-pairs edges


def test_estimate_tracks_exact_jaccard_on_planted_edit(shared_data):
    headline, body = read_articles(shared_data, 1)[0]
    edited = light_edit(body, random.Random(1), rate=0.02)
    exact = exact_pair_jaccard(body, edited)
    signatures, _, _ = kernel.text_signatures([body, edited], num_perm=256)
    estimate = kernel.estimated_jaccard(signatures[0], signatures[1])
    assert 0.7 < exact < 0.95
    assert abs(estimate - exact) < 0.08  # ~3 standard deviations at 256 permutations
    assert kernel.exact_jaccard(np.array([1, 2, 3, 3]), np.array([2, 3, 4])) == 0.5


# ------------------------------------------------------------------------------------------- clustering


def reference_components(edges):
    """Breadth-first search: node -> smallest node of its component."""
    adjacency = {}
    for a, b in edges:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    result = {}
    for start in adjacency:
        if start in result:
            continue
        seen, frontier = {start}, [start]
        while frontier:
            node = frontier.pop()
            for neighbor in adjacency[node] - seen:
                seen.add(neighbor)
                frontier.append(neighbor)
        root = min(seen)
        result.update({node: root for node in seen})
    return result


graphs = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)).filter(lambda e: e[0] != e[1]),
                  max_size=60)


@settings(max_examples=150, deadline=None)
@given(graphs, st.integers(1, 4), st.randoms(use_true_random=False))
def test_union_find_and_star_rounds_find_the_components(edges, rounds, rng):
    expected = reference_components(edges)
    assert kernel.components(edges) == expected
    assert kernel.star_rounds_components(edges, rounds) == expected
    # Mergeable: partial forests built in any split and order merge to the same components.
    shuffled = list(edges)
    rng.shuffle(shuffled)
    cut = rng.randint(0, len(shuffled))
    left, right = kernel.UnionFind(), kernel.UnionFind()
    for a, b in shuffled[:cut]:
        left.union(a, b)
    for a, b in shuffled[cut:]:
        right.union(a, b)
    assert right.merge(left).roots() == expected


def test_star_rounds_on_a_long_path_need_the_local_finish():
    path = [(f"{i:04d}", f"{i + 1:04d}") for i in range(300)]
    random.Random(3).shuffle(path)
    expected = {f"{i:04d}": "0000" for i in range(301)}
    assert kernel.star_rounds_components(path, 1) == expected
    assert kernel.star_rounds_components(path, 12) == expected


def test_beam_local_and_distributed_components_agree(tmp_path):
    rng = random.Random(5)
    edges = [(f"n{i:04d}", f"n{i + 1:04d}") for i in range(120)]  # a long chain: not converged in 1 round
    edges += [(f"r{rng.randrange(200):03d}", f"r{rng.randrange(200):03d}") for _ in range(150)]
    edges = [edge for edge in edges if edge[0] != edge[1]]
    expected = reference_components(edges)
    with test_pipeline.TestPipeline() as pipeline:
        edge_pcoll = pipeline | beam.Create(edges)
        for name, transform in (("local", LocalComponents()), ("one_round", DistributedComponents(1)),
                                ("six_rounds", DistributedComponents(6))):
            (edge_pcoll
             | f"{name}Components" >> transform
             | f"{name}Json" >> beam.Map(json.dumps)
             | f"{name}Write" >> beam.io.WriteToText(str(tmp_path / name), shard_name_template=""))
    for name in ("local", "one_round", "six_rounds"):
        lines = (tmp_path / name).read_text().splitlines()
        assert dict(json.loads(line) for line in lines) == expected, name
        assert len(lines) == len(expected)


# ------------------------------------------------------------------------------------------ survivor rule


def test_cluster_decision_names_the_survivor_and_caps_giants():
    signature = np.arange(128, dtype=np.uint32)
    near = signature.copy()
    near[:10] += 1
    members = [("bbb", 50, signature.tobytes()), ("aaa", 50, near.tobytes()), ("ccc", 10, near.tobytes())]
    size, removed = decide_cluster("aaa", iter(members), survivor_rule="longest_document", verify="signature",
                                   max_size=10)
    assert size == 3
    assert [member for member, _ in removed] == ["bbb", "ccc"]
    assert all(detail["survivor_id"] == "aaa" and detail["cluster_id"] == "aaa" for _, detail in removed)
    assert removed[0][1]["similarity"] == round(118 / 128, 4)
    size, removed = decide_cluster("aaa", iter(members * 5), survivor_rule="smallest_id", verify="signature",
                                   max_size=10)
    assert (size, removed) == (15, [])


def test_report_shape():
    config = MinHashConfig()
    stats = {"clusters": 2, "giant_count": 0, "histogram": {"2": 1, "3": 1}, "giants": []}
    report = build_report(config, 14, 9, candidate_edges=5, verified_edges=3, removed=3, cluster_stats=stats,
                          too_few_shingles=1, malformed=0)
    assert list(report) == sorted(report)
    assert {"stage", "parameters", "clusters", "removed", "cluster_size_histogram", "giant_components",
            "candidate_edges", "verified_edges"} <= set(report)
    assert {"num_perm", "bands", "rows", "threshold", "shingle", "ngram", "seed", "text", "scope",
            "verify"} <= set(report["parameters"])
    json.dumps(report, allow_nan=False)


def test_pair_problem():
    assert pair_problem({"id": "a", "dataset": "d", "query": "q", "document": "x"}) is None
    assert "document" in pair_problem({"id": "a", "dataset": "d", "query": "q", "document": None})
    assert pair_problem("text") == "not a pair record"


# ------------------------------------------------------------------------------------------ the Beam stage


@pytest.fixture(scope="module")
def planted(shared_data):
    return planted_corpus(shared_data)


def check_planted_result(planted, kept, rejects, report):
    pairs, clusters, unrelated = planted
    kept_ids = {pair["id"] for pair in kept}
    rejects_by_id = {reject["id"]: reject for reject in rejects}
    assert unrelated <= kept_ids, "an unrelated pair was removed"
    for members in clusters:
        ids = {pair["id"] for pair in members}
        survivor = expected_survivor(members)
        assert ids & kept_ids == {survivor}, "not exactly one survivor (the rule's) in a planted cluster"
        for removed_id in ids - {survivor}:
            reject = rejects_by_id[removed_id]
            assert (reject["stage"], reject["reason"]) == ("minhash", "near_duplicate")
            assert reject["detail"]["survivor_id"] == survivor
            assert reject["detail"]["cluster_id"] == min(ids)
            assert 0.5 < reject["detail"]["similarity"] <= 1.0
            assert reject["document"]  # texts kept by default
    assert len(kept) + len(rejects) == len(pairs)
    removed = sum(len(members) - 1 for members in clusters)
    assert report["removed"] == removed == len(rejects)
    assert report["clusters"] == len(clusters)
    assert sum(report["cluster_size_histogram"].values()) == len(clusters)
    assert report["verified_edges"] >= removed
    assert report["candidate_edges"] >= report["verified_edges"]


@pytest.fixture(scope="module")
def reference_run(planted, tmp_path_factory):
    return run_stage(planted[0], MinHashConfig(), tmp_path_factory.mktemp("reference"))


def test_stage_keeps_one_pair_per_planted_cluster(planted, reference_run):
    pairs, clusters, _ = planted
    # Precondition: the planted copies really are near-duplicates (exact Jaccard at or above 0.85).
    for members in clusters:
        for copy in members[1:]:
            assert exact_pair_jaccard(members[0]["query"] + "\n" + members[0]["document"],
                                      copy["query"] + "\n" + copy["document"]) >= 0.85
    kept, rejects, report = reference_run
    check_planted_result(planted, kept, rejects, report)
    assert report["components_method"] == "local"
    assert report["parameters"]["bands"] == 16 and report["parameters"]["rows"] == 8
    assert report["parameters"]["verify"] == "exact" and report["parameters"]["token_hash"] == "xxh32"
    # Kept pairs come out unchanged.
    by_id = {pair["id"]: pair for pair in pairs}
    assert all(pair == by_id[pair["id"]] for pair in kept)


def test_stage_shuffled_input_and_distributed_components_give_the_same_result(planted, reference_run,
                                                                              tmp_path):
    pairs, _, _ = planted
    shuffled = list(pairs)
    random.Random(11).shuffle(shuffled)
    forced = MinHashConfig(local_union_find_max_edges=0, distributed_rounds=2)
    kept, rejects, report = run_stage(shuffled, forced, tmp_path / "distributed")
    check_planted_result(planted, kept, rejects, report)
    assert report["components_method"] == "distributed"
    assert kept == reference_run[0]
    assert rejects == reference_run[1]
    assert {**report, "components_method": "local"} == reference_run[2]


def test_stage_multiprocess_direct_runner_gives_the_same_result(planted, reference_run, tmp_path):
    options = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=2",
                               "--direct_running_mode=multi_processing"])
    assert run_stage(planted[0], MinHashConfig(), tmp_path / "multiprocess", options=options) == reference_run


def test_stage_scope_text_exact_verification_and_bad_rows(shared_data, tmp_path):
    articles = unrelated_articles(shared_data, 30)[:12]
    (headline_a, body_a), (_, body_b) = articles[0], articles[1]
    pairs = [make_pair(h, b, f"a{i}") for i, (h, b) in enumerate(articles[2:])]
    # The same article in two datasets: a duplicate only when the scope is the whole run.
    in_one = make_pair(headline_a, body_a, "x", dataset="bbc_one")
    in_two = make_pair(headline_a, light_edit(body_a, random.Random(2)), "y", dataset="bbc_two")
    # Same document, different headline: a near-duplicate pair of documents, not of queries.
    doc_1 = make_pair("Completely different headline about markets", body_b, "d1")
    doc_2 = make_pair("Another unrelated title on trade figures", body_b, "d2")
    malformed = {"id": "bad", "dataset": "bbc", "query": None, "document": "text"}
    no_words = make_pair("?", "!! -- ??", "punctuation only")  # no shingle: passes untouched
    # Amazon-style templated reviews: one shared template, a different product each. With the component cap
    # at 5, their chain of 8 is reported, not trusted: none of them is removed.
    template = ("Five stars. I bought this for my daughter and she loves it, the quality is great and it "
                "arrived on time, exactly as described, would buy again from this seller without a doubt")
    templated = [make_pair("Five Stars", f"{template} product {i}", f"r{i}") for i in range(8)]
    pairs += [in_one, in_two, doc_1, doc_2, malformed, no_words] + templated

    config = MinHashConfig(verify="exact", max_component_size=5)
    kept, rejects, report = run_stage(pairs, config, tmp_path / "dataset_scope")
    kept_ids = {pair["id"] for pair in kept}
    assert {in_one["id"], in_two["id"]} <= kept_ids  # different datasets
    assert len({doc_1["id"], doc_2["id"]} & kept_ids) == 1  # pair text shares the whole document
    assert {r["reason"] for r in rejects} == {"near_duplicate", "malformed_pair"}
    assert report["malformed"] == 1 and report["parameters"]["verify"] == "exact"
    assert report["too_few_shingles"] == 1 and no_words in kept
    assert {pair["id"] for pair in templated} <= kept_ids
    assert report["giant_components"] == [{"cluster_id": min(p["id"] for p in templated), "size": 8}]
    assert report["removed"] == len(rejects) - 1 == 1
    assert report["cluster_size_histogram"] == {"2": 1, "8": 1}

    config = MinHashConfig(scope="all", text="query", survivor="smallest_id")
    kept, rejects, report = run_stage(pairs, config, tmp_path / "all_scope")
    kept_ids = {pair["id"] for pair in kept}
    assert len({in_one["id"], in_two["id"]} & kept_ids) == 1  # same headline across datasets
    assert {doc_1["id"], doc_2["id"]} <= kept_ids  # different headlines
    removed = next(r for r in rejects if r["id"] in (in_one["id"], in_two["id"]))
    assert removed["detail"]["survivor_id"] == min(in_one["id"], in_two["id"])
    assert removed["detail"]["similarity"] == 1.0
