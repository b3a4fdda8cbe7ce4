"""Mixture builds: three sources in one graph, one release, duplicates removed across datasets,
decontamination against evaluation texts, every dataset with its weight."""

from __future__ import annotations

import json
import re

import yaml

from pipelines import verify
from tests.helpers import release_rejects, release_rows, run_build

SPAN = "brew the beans slowly at ninety two degrees for exactly four minutes before you press them"
PLANTED_QUERY = "How can I be a good geologist?"  # a Quora duplicate pair, repeated in my_pairs
PLANTED_DOCUMENT = "What should I do to be a great geologist?"


def _own_pairs(tmp_path):
    rows = [{"id": f"own{n}", "query": f"Which grinder setting suits brew method {n}?",
             "document": f"Setting {n} on the burr grinder gives an even grind for method {n} every time."}
            for n in range(6)]
    rows.append({"id": "dup", "query": PLANTED_QUERY, "document": PLANTED_DOCUMENT})
    rows.append({"id": "eq", "query": "What is the ideal espresso dose for a double shot?",
                 "document": "Most baristas use eighteen to twenty grams of ground coffee."})
    rows.append({"id": "span", "query": "How long should a French press steep?",
                 "document": f"My routine: {SPAN}, then pour."})
    path = tmp_path / "my_pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    evals = tmp_path / "eval_texts.jsonl"
    evals.write_text("".join(json.dumps(row) + "\n" for row in [
        {"text": "what is the IDEAL espresso dose for a double shot"},
        {"text": f"In the benchmark passage we {SPAN} and serve."}]))
    return path, evals


def _mixture(tmp_path, shared_data, **extra):
    own, evals = _own_pairs(tmp_path)
    mixture = {
        "sources": [
            {"source": "jsonl", "inputs": [own.name], "set": {"source.dataset": "my_pairs"}, "weight": 3.0},
            {"source": "stackexchange", "inputs": [str(shared_data / "stackexchange" / "coffee.stackexchange.com")],
             "weight": 2.0},
            {"source": "quora", "inputs": [str(shared_data / "quora")]},
        ],
        "decontaminate": {"inputs": [evals.name], "text_field": "text", "ngram": 13},
        "skip": ["consistency", "negatives"],
        **extra,
    }
    path = tmp_path / "mixture.yaml"
    path.write_text(yaml.safe_dump(mixture, sort_keys=False))
    return path


def test_three_sources_one_release(tmp_path, shared_data):
    out = tmp_path / "release"
    assert run_build("--mixture", str(_mixture(tmp_path, shared_data)), "--output", str(out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    datasets = set(manifest["datasets"])
    assert {"my_pairs", "quora_duplicates", "stackexchange_title_body"} <= datasets
    by_source = {entry["source"]: entry for entry in manifest["mixture"]["sources"]}
    assert by_source["jsonl"]["datasets"] == ["my_pairs"] and by_source["jsonl"]["weight"] == 3.0
    assert "quora_duplicates" in by_source["quora"]["datasets"]
    assert {d for entry in by_source.values() for d in entry["datasets"]} >= datasets
    assert manifest["config"]["exact_dedup"]["scope"] == "all"

    rejects = release_rejects(out)
    # The planted pair is in my_pairs and quora_duplicates: one copy survives, its reject names the other.
    planted = [r for r in rejects if r["stage"] in ("exact_dedup", "minhash") and r["query"] == PLANTED_QUERY]
    assert len(planted) == 1
    survivor_dataset = planted[0]["detail"]["survivor_dataset"]
    assert {planted[0]["dataset"], survivor_dataset} == {"my_pairs", "quora_duplicates"}
    kept = [row for dataset in datasets for row in release_rows(out, dataset) if row["query"] == PLANTED_QUERY]
    assert [row["dataset"] for row in kept] == [survivor_dataset]

    # Exactly the planted contamination, each with its reason and evidence.
    contaminated = {r["id"]: r for r in rejects if r["stage"] == "decontaminate"}
    assert {r["query"] for r in contaminated.values()} == {
        "What is the ideal espresso dose for a double shot?", "How long should a French press steep?"}
    assert {r["reason"] for r in contaminated.values()} == {"contaminated"}
    details = {r["detail"]["match"]: r["detail"] for r in contaminated.values()}
    assert details["text"]["evaluation_record"] == "eval_texts.jsonl:1" and details["text"]["field"] == "query"
    assert details["ngram"]["evaluation_record"] == "eval_texts.jsonl:2" and details["ngram"]["field"] == "document"
    assert [item["name"] for item in manifest["evaluation_inputs"]] == ["eval_texts.jsonl"]

    # The funnel covers every source's datasets; verify accepts the release.
    assert set(manifest["funnel"]["per_dataset"]) >= datasets
    assert verify.main([str(out)]) == 0
    # contrastors' data config: every dataset with its source's weight.
    entries = {entry["name"]: entry for entry in yaml.safe_load((out / "contrastors.yaml").read_text())["datasets"]}
    assert set(entries) == {name for name, summary in manifest["datasets"].items() if summary["shards"]}
    assert entries["my_pairs"]["weight"] == 3.0 and entries["stackexchange_title_body"]["weight"] == 2.0
    assert entries["quora_duplicates"]["weight"] == 1.0

    # The map: 2,000 of the kept pairs (there are more), one circle each, titled with query and id.
    report = (out / "report.html").read_text()
    kept_total = sum(summary["rows"] for summary in manifest["datasets"].values())
    assert kept_total > 2000
    assert report.count("<circle ") == 2000 and "<script" not in report
    smallest = min(row["id"] for dataset in datasets for row in release_rows(out, dataset))
    assert f" {smallest}</title></circle>" in report
    assert "<h3>Sources</h3>" in report and "contaminated" in report
    assert "hashed bag-of-words" in report and "hashed bag-of-words" in (out / "README.md").read_text()


def test_mixture_errors_are_one_line(tmp_path, shared_data, capsys):
    own, _ = _own_pairs(tmp_path)
    cases = {
        "dataset 'my_pairs'": {"sources": [
            {"source": "jsonl", "inputs": [str(own)], "set": {"source.dataset": "my_pairs"}},
            {"source": "jsonl", "inputs": [str(own)], "set": {"source.dataset": "my_pairs"}}]},
        "unknown key 'sources.0.wieght'": {"sources": [{"source": "jsonl", "inputs": [str(own)], "wieght": 2}]},
        "shared stages take the first source's": {"sources": [
            {"source": "jsonl", "inputs": [str(own)]},
            {"source": "quora", "inputs": [str(shared_data / "quora")], "set": {"minhash.threshold": 0.9}}]},
        "unknown source 'nope'": {"sources": [{"source": "nope"}]},
    }
    for expected, mixture in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(mixture))
        assert run_build("--mixture", str(path), "--output", str(tmp_path / "never")) == 2, expected
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (expected, err)
    assert not (tmp_path / "never" / "manifest.json").exists()


def test_the_shipped_example_validates():
    from pipelines.core.config import CONFIG_DIR, load_mixture

    mixture = load_mixture(CONFIG_DIR / "mixtures" / "example.yaml")
    assert [entry.source for entry in mixture.sources] == ["stackexchange", "quora", "amazon", "news"]


def test_map_of_query_embeddings_marks_consistency_drops(tmp_path):
    """With the embedding stages: every kept pair and every pair the consistency filter dropped is one point,
    placed by the model's query embeddings; drops are hollow."""
    topics = ["espresso grind size", "french press steeping", "milk frothing", "bean storage", "cold brew ratio",
              "descaling a kettle", "pour over bloom", "roast levels"]
    rows = []
    for n, topic in enumerate(topics):
        rows.append({"id": f"t{n}", "query": f"What should I know about {topic}?",
                     "document": f"A short guide to {topic}: start simple, measure, and adjust one thing at a time."})
    # Documents that answer another topic's question: candidates for the consistency filter.
    for n in range(4):
        rows.append({"id": f"x{n}", "query": f"Tell me about {topics[n]}.",
                     "document": f"A short guide to {topics[n + 4]}: start simple, measure, adjust one thing."})
    path = tmp_path / "coffee_pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    assert run_build("--source", "jsonl", "--input", str(path), "--output", str(out),
                     "--skip", "negatives", "--set", "consistency.top_k=1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    kept = manifest["datasets"]["custom_pairs"]["rows"]
    dropped = [r for r in release_rejects(out) if r["stage"] == "consistency"]
    report = (out / "report.html").read_text()
    assert report.count("<circle ") == kept + len(dropped)
    circles = re.findall(r"<circle [^>]*>", report)
    assert sum('fill="none"' in circle for circle in circles) == len(dropped) > 0
    assert "query embeddings by all-MiniLM-L6-v2" in report
    assert "query embeddings by all-MiniLM-L6-v2" in (out / "README.md").read_text()


def test_mixture_builds_are_byte_identical(tmp_path):
    own, evals = _own_pairs(tmp_path)
    other = tmp_path / "other_pairs.jsonl"
    other.write_text("".join(json.dumps({"id": f"o{n}", "query": f"Why does my kettle {n} whistle?",
                                         "document": f"Kettle {n} whistles because steam escapes the spout."}) + "\n"
                             for n in range(5))
                     + json.dumps({"id": "dup", "query": PLANTED_QUERY, "document": PLANTED_DOCUMENT}) + "\n")
    mixture = tmp_path / "two.yaml"
    mixture.write_text(yaml.safe_dump({
        "sources": [{"source": "jsonl", "inputs": [own.name], "set": {"source.dataset": "my_pairs"}},
                    {"source": "jsonl", "inputs": [other.name], "set": {"source.dataset": "other_pairs"},
                     "weight": 0.5}],
        "decontaminate": {"inputs": [evals.name]}, "skip": ["consistency", "negatives"]}))
    outputs = [tmp_path / "a", tmp_path / "b"]
    for out in outputs:
        assert run_build("--mixture", str(mixture), "--output", str(out)) == 0

    def files(root):
        return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
                if path.is_file() and not str(path.relative_to(root)).startswith("runs/")}

    first, second = files(outputs[0]), files(outputs[1])
    assert first.keys() == second.keys() and first == second
    rejects = release_rejects(outputs[0])
    [planted] = [r for r in rejects if r["stage"] == "exact_dedup"]
    assert {planted["dataset"], planted["detail"]["survivor_dataset"]} == {"my_pairs", "other_pairs"}
    assert len([r for r in rejects if r["stage"] == "decontaminate"]) == 2


def test_a_dataset_clash_only_the_data_shows_commits_nothing(tmp_path, shared_data, capsys):
    own, _ = _own_pairs(tmp_path)
    mixture = tmp_path / "clash.yaml"
    mixture.write_text(yaml.safe_dump({"sources": [
        {"source": "jsonl", "inputs": [str(own)], "set": {"source.dataset": "quora_duplicates"}},
        {"source": "quora", "inputs": [str(shared_data / "quora")]}], "skip": ["consistency", "negatives"]}))
    out = tmp_path / "out"
    assert run_build("--mixture", str(mixture), "--output", str(out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "dataset 'quora_duplicates' is produced by mixture sources [0, 1]" in err[-1]
    assert not (out / "manifest.json").exists()
