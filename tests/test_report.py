"""The audit report (report.html) and the per-dataset distributions behind it (pipelines.release.stats)."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.core.records import make_reject, new_pair
from pipelines.release import manifest as manifest_lib
from pipelines.release import stats as stats_lib
from pipelines.release.report import render_report
from tests.helpers import KEEP_TEXTS, run_build

REPO_ROOT = Path(__file__).resolve().parent.parent
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


# -- a synthetic release with every stage run: the stages' record formats, made by hand ------------------------

def synthetic_records(seed: int = 7, pairs_per_dataset: int = 120):
    rng = random.Random(seed)
    kept, rejects = [], []
    for dataset in ("demo_title_body", "demo_question_answer"):
        for index in range(pairs_per_dataset):
            query = f"question {index} " + "word " * rng.randint(1, 30)
            document = f"answer {index} " + "text " * rng.randint(5, 400)
            if index == 0:
                query = HOSTILE  # untrusted text must never become markup
            pair = new_pair(dataset=dataset, source="demo", query=query, document=document,
                            provenance={"input": f"{dataset}.jsonl", "record": f"{dataset}/{index}",
                                        "license": "CC BY-SA 4.0", "url": f"https://example.org/q/{index}"})
            roll = index % 10
            positive = round(rng.uniform(0.2, 0.95), 4)
            if roll == 0 and index:
                rejects.append(make_reject(pair, stage="exact_dedup", reason="exact_duplicate",
                                           detail={"survivor_id": kept[-1]["id"]}, policy=KEEP_TEXTS))
            elif roll == 1:
                rejects.append(make_reject(pair, stage="minhash", reason="near_duplicate",
                                           detail={"cluster_id": "c1", "survivor_id": kept[-1]["id"] if kept else "",
                                                   "similarity": round(rng.uniform(0.8, 1.0), 4)}, policy=KEEP_TEXTS))
            elif roll == 2:
                rejects.append(make_reject(pair, stage="consistency", reason="not_in_top_k",
                                           detail={"rank": rng.randint(2, 80), "score": round(positive - 0.3, 4),
                                                   "outranked_by": [kept[-1]["id"]] if kept else []},
                                           policy=KEEP_TEXTS))
            else:
                negatives = [round(positive - rng.uniform(0.01, 0.4), 4) for _ in range(3)]
                pair["scores"] = {"positive": positive, "rank": rng.randint(0, 1), "negatives": negatives}
                pair["negatives"] = [f"negative {index}-{n}" for n in range(3)]
                kept.append(pair)
    return kept, rejects


def synthetic_manifest(kept, rejects, skipped=()):
    stages = [stage for stage in ("normalize", "exact_dedup", "minhash", "consistency", "negatives")
              if stage not in skipped]
    read_counts, final_rows, reject_counts = {}, {}, {}
    for pair in kept:
        final_rows[pair["dataset"]] = final_rows.get(pair["dataset"], 0) + 1
    for row in kept + rejects:
        read_counts[row["dataset"]] = read_counts.get(row["dataset"], 0) + 1
    for reject in rejects:
        key = (reject["dataset"], reject["stage"], reject["reason"])
        reject_counts[key] = reject_counts.get(key, 0) + 1
    funnel = manifest_lib.compute_funnel(read_counts, [(*key, n) for key, n in reject_counts.items()], stages,
                                         final_rows)
    static = {"project": {"name": "pair-curation", "version": "0.1", "commit": "abc"}, "source": "demo",
              "skipped_stages": sorted(skipped), "config": {"consistency": {"top_k": 2}}, "config_sha256": "0" * 64,
              "inputs": [{"name": "demo_title_body.jsonl", "bytes": 10, "sha256": "1" * 64},
                         {"name": f"{HOSTILE}.jsonl", "bytes": 1, "sha256": "2" * 64}],
              "model": {"name": "all-MiniLM-L6-v2", "weights_sha256": "3" * 64}}
    reports = [{"stage": "minhash", "cluster_size_histogram": {"2": 9, "3": 2, "17": 1}},
               {"stage": "consistency", "rank_histogram": {"0": 50, "1": 40, "2": 3}}]
    reports = [report for report in reports if report["stage"] not in skipped]
    return manifest_lib.build_manifest(static=static, funnel=funnel, dataset_summaries=[
        {"dataset": name, "rows": rows, "shards": []} for name, rows in final_rows.items()],
        reject_summaries=[], stage_reports=reports, files=[])


def synthetic_samples(kept, rejects):
    groups = {}
    for pair in kept:
        groups.setdefault(("kept", pair["dataset"], ""), []).append(pair)
    for reject in rejects:
        groups.setdefault(("rejected", reject["stage"], reject["reason"]), []).append(reject)
    # The first five ids per group, as the graph picks them, plus the pair carrying markup in its title.
    return [{"group": list(key), "items": sorted(items, key=lambda r: (r.get("query") != HOSTILE, r["id"]))[:5]}
            for key, items in groups.items()]


def synthetic_stats(kept, rejects):
    datasets = sorted({row["dataset"] for row in kept + rejects})
    return [stats_lib.summarize(name, [p for p in kept if p["dataset"] == name],
                                [r for r in rejects if r["dataset"] == name]) for name in datasets]


@functools.lru_cache(maxsize=None)
def cached_report() -> str:
    """One render shared by the tests that only read it (rendering takes seconds on a busy 2-core machine)."""
    return full_report()


def full_report(skipped=()):
    kept, rejects = synthetic_records()
    # A build without a stage has none of its rejects, and without the embedding stages no scores.
    rejects = [reject for reject in rejects if reject["stage"] not in skipped]
    if {"consistency", "negatives"} <= set(skipped):
        kept = [{**pair, "scores": {}, "negatives": []} for pair in kept]
    manifest = synthetic_manifest(kept, rejects, skipped)
    return render_report(manifest, synthetic_samples(kept, rejects), synthetic_stats(kept, rejects),
                         license_id="cc-by-sa-4.0", attribution=f"by {HOSTILE}")


def embedded_images(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img class="plot" alt="[^"]*" '
                                                          r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', html)]


# -- stats -----------------------------------------------------------------------------------------------------

def test_length_and_score_bins_are_fixed_and_cover_their_ranges():
    assert stats_lib.length_bin(0) == 0
    assert stats_lib.length_bin(1) == 1
    assert stats_lib.LENGTH_EDGES[stats_lib.length_bin(1000)] <= 1000 < stats_lib.LENGTH_EDGES[
        stats_lib.length_bin(1000) + 1]
    assert stats_lib.length_bin(10 ** 9) == len(stats_lib.LENGTH_EDGES) - 1
    assert stats_lib.score_bin(-1.0) == 0 and stats_lib.score_bin(1.0) == stats_lib.SCORE_BINS - 1
    assert stats_lib.score_bin(0.0) == 50 and stats_lib.score_bin(0.019) == 50 and stats_lib.score_bin(0.021) == 51
    assert stats_lib.score_bin(7.5) == stats_lib.SCORE_BINS - 1 and stats_lib.score_bin(-3) == 0


def test_summary_counts_every_row():
    kept, rejects = synthetic_records()
    name = "demo_title_body"
    mine = [p for p in kept if p["dataset"] == name]
    dropped = [r for r in rejects if r["dataset"] == name]
    summary = stats_lib.summarize(name, mine, dropped)
    assert summary["kept"] == len(mine) and summary["rejected"] == len(dropped)
    assert sum(summary["query_chars"]) == sum(summary["document_chars"]) == len(mine)
    assert summary["document_chars_sum"] == sum(len(p["document"]) for p in mine)
    assert summary["document_chars_max"] == max(len(p["document"]) for p in mine)
    assert sum(summary["positive_kept"]) == len(mine)
    assert sum(summary["negative_kept"]) == 3 * len(mine)
    assert sum(summary["rank_kept"].values()) == len(mine) and set(summary["rank_kept"]) <= {"0", "1"}
    consistency = [r for r in dropped if r["stage"] == "consistency"]
    assert sum(summary["rank_rejected"].values()) == len(consistency)
    assert sum(summary["rejected_score"]["consistency"]) == len(consistency)
    assert sum(summary["rejected_score"]["minhash"]) == sum(1 for r in dropped if r["stage"] == "minhash")
    # Ranks past the cap share one bin, so the summary cannot grow with the search depth.
    assert all(label.isdigit() and int(label) < stats_lib.RANK_CAP or label == f"{stats_lib.RANK_CAP}+"
               for label in summary["rank_rejected"])
    assert summary["inputs"] == [{"input": f"{name}.jsonl", "license": "CC BY-SA 4.0", "kept": len(mine),
                                  "rejected": len(dropped)}]
    # One scatter point per pair while under the cap: (positive, hardest negative).
    by_point = sorted(summary["scatter"])
    assert by_point == sorted([p["scores"]["positive"], max(p["scores"]["negatives"])] for p in mine)


def test_summary_ignores_missing_or_broken_scores():
    pair = new_pair(dataset="d", source="s", query="q", document="doc", provenance={})
    pair["scores"] = {"positive": float("nan"), "rank": "first", "negatives": [None, "x", float("inf")]}
    summary = stats_lib.summarize("d", [pair, new_pair(dataset="d", source="s", query="a", document="b",
                                                        provenance={})],
                                  [make_reject(pair, stage="consistency", reason="r", detail={"score": "high"},
                                               policy=KEEP_TEXTS)])
    assert summary["kept"] == 2 and sum(summary["positive_kept"]) == 0 and summary["scatter"] == []
    assert summary["rank_kept"] == {f"{stats_lib.RANK_CAP}+": 1}
    assert summary["rejected_score"] == {}


def test_merging_in_any_grouping_gives_the_same_summary():
    kept, rejects = synthetic_records(pairs_per_dataset=300)
    combine = stats_lib.DatasetStatsFn()
    elements = [("kept", p) for p in kept] + [("rejected", r) for r in rejects]

    def combined(order_seed: int, parts: int) -> dict:
        shuffled = elements[:]
        random.Random(order_seed).shuffle(shuffled)
        accumulators = []
        for part in range(parts):
            accumulator = combine.create_accumulator()
            for element in shuffled[part::parts]:
                accumulator = combine.add_input(accumulator, element)
            accumulators.append(accumulator)
        return stats_lib.extract(combine.merge_accumulators(accumulators), "all")

    reference = combined(0, 1)
    assert json.dumps(combined(1, 5), sort_keys=True) == json.dumps(reference, sort_keys=True)
    assert json.dumps(combined(2, 17), sort_keys=True) == json.dumps(reference, sort_keys=True)


def test_scatter_sample_is_bounded_and_takes_the_smallest_id_hashes(monkeypatch):
    monkeypatch.setattr(stats_lib, "SCATTER_POINTS", 10)
    kept, _ = synthetic_records(pairs_per_dataset=100)
    summary = stats_lib.summarize("all", kept)
    assert len(summary["scatter"]) == 10
    expected = sorted(kept, key=lambda p: stats_lib._id_hash(p["id"]))[:10]
    assert summary["scatter"] == [[p["scores"]["positive"], max(p["scores"]["negatives"])] for p in expected]


def test_beam_combine_matches_the_plain_summary():
    kept, rejects = synthetic_records(pairs_per_dataset=60)
    expected = synthetic_stats(kept, rejects)
    with test_pipeline.TestPipeline() as pipeline:
        pairs = pipeline | "Pairs" >> beam.Create(kept)
        dropped = pipeline | "Rejects" >> beam.Create(rejects)
        result = ((pairs, dropped) | stats_lib.ReleaseStats()
                  | beam.Map(lambda summary: json.dumps(summary, sort_keys=True)))
        assert_that(result, equal_to([json.dumps(summary, sort_keys=True) for summary in expected]))


# -- the report ------------------------------------------------------------------------------------------------

def test_report_has_every_plot_as_an_embedded_image():
    html = cached_report()
    images = embedded_images(html)
    alts = re.findall(r'<img class="plot" alt="([^"]*)"', html)
    assert alts == ["funnel per stage and reason, per dataset", "query and document length distributions",
                    "consistency rank histogram", "positive score histograms", "positive versus negative scores",
                    "near-duplicate cluster sizes"]
    assert len(images) == len(alts)
    for image in images:
        assert image.startswith(b"<?xml") and b"<svg" in image and b"</svg>" in image
    # The data reached the plots: the datasets are named inside them.
    assert all(b"demo_title_body" in image for image in images[1:])


def test_report_is_self_contained():
    html = cached_report()
    assert "<script" not in html.lower().replace("&lt;script", "")
    # No resource outside the file: no src/href/url() other than data URIs and in-page anchors.
    for attribute, value in re.findall(r'\b(src|href)\s*=\s*"([^"]*)"', html):
        assert value.startswith("data:") or value.startswith("#"), (attribute, value)
    assert "url(" not in html and "@import" not in html and "<link" not in html and "<iframe" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for image in embedded_images(html):
        assert b"xlink:href=\"http" not in image and b"href=\"http" not in image and b"<script" not in image


def test_untrusted_text_is_escaped():
    html = cached_report()
    assert HOSTILE not in html
    assert "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    assert escaped in html  # the kept sample's title, the input name, the attribution
    assert html.count(escaped) >= 3


def test_two_renders_are_byte_identical():
    html = full_report()
    assert html.encode() == cached_report().encode()
    # Also in another process with another string-hash seed (set and dict orders must not leak into output).
    script = "import sys; from tests.test_report import full_report; sys.stdout.write(full_report())"
    other = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True).stdout
    assert hashlib.sha256(other.encode()).hexdigest() == hashlib.sha256(html.encode()).hexdigest()


def test_skipped_stages_are_shown_not_failed():
    html = full_report(skipped=("minhash", "consistency", "negatives"))
    for stage in ("minhash", "consistency", "negatives"):
        assert f"Stage skipped: <code>{stage}</code>" in html
    assert len(embedded_images(html)) == 2  # funnel and lengths only
    bare = render_report({"source": "x", "funnel": {}, "datasets": {}}, [], None)
    assert "Distributions were not computed" in bare and "<html" in bare


def test_report_shows_samples_inputs_and_model():
    kept, rejects = synthetic_records()
    html = cached_report()
    for reason in ("exact_duplicate", "near_duplicate", "not_in_top_k"):
        assert reason in html
    assert min(p["id"] for p in kept if p["dataset"] == "demo_title_body") in html
    assert "1" * 64 in html and "CC BY-SA 4.0" in html
    assert "3" * 64 in html and "all-MiniLM-L6-v2" in html


# -- a real build ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def release(stackexchange_sample, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("report") / "release"
    status = run_build("--source", "stackexchange", "--input", str(stackexchange_sample),
                       "--output", str(output), "--skip", "minhash",
                       "--skip", "consistency", "--skip", "negatives")
    assert status == 0
    return output


def test_every_release_has_a_listed_report_linked_from_the_card(release):
    manifest = json.loads((release / "manifest.json").read_text())
    report = release / "report.html"
    entry = next(entry for entry in manifest["files"] if entry["key"] == "report.html")
    assert entry["sha256"] == hashlib.sha256(report.read_bytes()).hexdigest()
    assert "(report.html)" in (release / "README.md").read_text()
    html = report.read_text()
    assert len(embedded_images(html)) == 2  # funnel, lengths; the skipped stages say so
    assert "Stage skipped: <code>consistency</code>" in html
    # The distributions cover every published pair, not the samples.
    for dataset, summary in manifest["datasets"].items():
        assert f"<td>{dataset}</td><td class=\"n\">{summary['rows']:,}</td>" in html
    assert "cardano.stackexchange.com/Posts.xml" in html and "CC BY-SA 4.0" in html


# -- layout: score range, samples, model table ----------------------------------------------------------------

def test_score_plots_span_the_data_range():
    from pipelines.release.report import positive_score_plot, score_range

    edges = stats_lib.score_bin_edges()
    in_unit = [0] * stats_lib.SCORE_BINS
    in_unit[stats_lib.score_bin(0.31)] = 4
    in_unit[stats_lib.score_bin(0.93)] = 2
    summary = {"dataset": "d", "positive_kept": in_unit, "score_edges": edges}
    assert score_range([summary]) == (0.0, 1.0)
    below = list(in_unit)
    below[stats_lib.score_bin(-0.23)] = 1
    assert score_range([summary, {"dataset": "e", "negative_kept": below}]) == (-0.3, 1.0)
    assert score_range([{"dataset": "f", "scatter": [[0.5, -0.05]]}]) == (-0.1, 1.0)
    assert score_range([]) == (0.0, 1.0)
    # The plot itself: its axis starts at 0, with no tick at -1 or -0.5.
    svg = embedded_images(positive_score_plot([summary]))[0].decode()
    ticks = re.findall(r">(\u2212?\d\.\d+)<", svg)
    assert "0.0" in ticks and "1.0" in ticks and not any(t.startswith("\u2212") for t in ticks)


def test_sample_texts_are_cut_with_an_ellipsis_and_open_whole():
    kept, _ = synthetic_records()
    html = cached_report()
    shown = [p["document"] for p in kept if len(p["document"]) > 600 and f'<span class="mono">{p["id"]}</span>' in html]
    assert shown, "no long sample document in the report"
    for document in shown:
        # Whole inside the <details>, and its first characters with an ellipsis as the summary.
        assert f'<div class="full">{document}</div>' in html
        assert re.search(re.escape(document[:100]) + r"[^<]*…</summary>", html)
    assert "max-height" not in html and "overflow:auto" not in html  # no scroll boxes that clip text
    # Provenance shows the record and its URL; the other keys open on a click.
    assert "<b>record</b>: demo_title_body/" in html
    assert re.search(r"<details><summary>2 more</summary><b>input</b>: [^<]+<br><b>license</b>: CC BY-SA 4.0</details>",
                     html)
    # Reject groups are closed by default, kept pairs open.
    assert html.count("<details open><summary><b>demo_") == 2
    assert re.search(r"<details><summary><b>minhash / near_duplicate</b> \(\d+ samples\)</summary>", html)


def test_model_table_has_named_headers():
    html = cached_report()
    model = html[html.index('<h2 id="model">'):html.index('<h2 id="configuration">')]
    assert "<th>field</th><th>value</th>" in model
    assert "<th></th>" not in html
