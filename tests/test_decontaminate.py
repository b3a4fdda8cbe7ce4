"""The decontaminate stage: pairs equal to, or sharing a 13-word span with, an evaluation text are rejected."""

from __future__ import annotations

import json

from filters import decontaminate
from tests.helpers import release_rejects, release_rows, run_build

FAST = ("--skip", "consistency", "--skip", "negatives")
SPAN = "the quick brown fox jumps over the lazy dog while the farmer sleeps soundly tonight"


def test_text_keys_whole_text_and_ngrams():
    short = decontaminate.text_keys("How do I reset my router?", 13)
    assert [kind for kind, _ in short.values()] == ["text"]  # shorter than 13 words: compared whole
    long_keys = decontaminate.text_keys(SPAN, 13)  # 15 words: the whole text and three 13-grams
    assert sorted(kind for kind, _ in long_keys.values()) == ["ngram"] * 3 + ["text"]
    # Normalization: case, punctuation and spacing do not matter.
    assert decontaminate.text_keys("HOW do I  reset, my router", 13).keys() == short.keys()


def test_choose_match_prefers_equality_then_query():
    pair = {"query": "How do I reset my router?", "document": "Unplug it. " + SPAN}
    keys = decontaminate.pair_keys(pair, 13)
    by_kind = {(field, kind): key for key, (field, kind, _) in keys.items()}
    gram_key = next(key for (field, kind), key in by_kind.items() if kind == "ngram")
    matches = [(gram_key, "eval.jsonl:2"), (by_kind[("query", "text")], "eval.jsonl:9")]
    assert decontaminate.choose_match(pair, matches, 13)[:2] == ("query", "text")
    assert decontaminate.choose_match(pair, [(12345, "x:1")], 13) is None  # a key the pair lacks


def _pairs(tmp_path, extra_common: int = 0):
    rows = [{"id": f"p{n}", "query": f"What is item number {n} for?",
             "document": f"Item {n} holds the spare parts of machine {n} in the shed."} for n in range(8)]
    rows.append({"id": "eq", "query": "How do I reset my router?", "document": "Hold the reset button down."})
    rows.append({"id": "span", "query": "Who sleeps?", "document": f"A story: {SPAN}. The end."})
    # A boilerplate span in many pairs (and in the evaluation set): too common to mean contamination.
    boiler = "this content is licensed under the creative commons attribution share alike license version four"
    for n in range(extra_common):
        rows.append({"id": f"b{n}", "query": f"Question {n} about gears?", "document": f"Answer {n}. {boiler}"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = tmp_path / "eval.jsonl"
    evals.write_text("\n".join(json.dumps(r) for r in [
        {"text": "how do I reset my ROUTER"}, {"text": "unrelated words here"},
        {"text": f"Earlier, {SPAN}, as the story goes."}, {"text": f"footer: {boiler}"}, {"other": 1}, "x"]) + "\n")
    return path, evals


def test_build_rejects_planted_contamination_only(tmp_path):
    pairs, evals = _pairs(tmp_path, extra_common=12)
    out = tmp_path / "out"
    assert run_build("--source", "jsonl", "--input", str(pairs), "--output", str(out), *FAST,
                     "--set", "decontaminate.enabled=true", "--set", f"decontaminate.inputs=[{evals}]") == 0
    rejects = [r for r in release_rejects(out) if r["stage"] == "decontaminate"]
    by_query = {r["query"]: r for r in rejects}
    assert set(by_query) == {"How do I reset my router?", "Who sleeps?"}
    assert {r["reason"] for r in rejects} == {"contaminated"}
    assert by_query["How do I reset my router?"]["detail"] == {
        "evaluation_record": "eval.jsonl:1", "field": "query", "match": "text",
        "text": "how do i reset my router"}
    span_detail = by_query["Who sleeps?"]["detail"]
    assert span_detail["evaluation_record"] == "eval.jsonl:3" and span_detail["match"] == "ngram"
    assert len(span_detail["ngram"].split()) == 13 and span_detail["ngram"] in SPAN
    manifest = json.loads((out / "manifest.json").read_text())
    report = manifest["stage_reports"]["decontaminate"]
    assert report["contaminated_pairs"] == 2 and report["too_common_ngrams"] >= 1
    assert report["evaluation_texts"] == 4 and report["evaluation_rows_without_text"] == 2
    assert report["most_common_ngrams"][0]["pairs"] == 12
    assert "creative commons" in report["most_common_ngrams"][0]["ngram"]
    assert [item["name"] for item in manifest["evaluation_inputs"]] == ["eval.jsonl"]
    kept = {row["id"] for row in release_rows(out, "custom_pairs")}
    assert len(kept) == 8 + 12  # every boilerplate pair kept, nothing else removed
    assert (out / "report.html").read_text().count("<circle ") == 20  # every kept pair on the map


def test_enabled_without_inputs_is_one_line(tmp_path, capsys):
    pairs, _ = _pairs(tmp_path)
    assert run_build("--source", "jsonl", "--input", str(pairs), "--output", str(tmp_path / "o"), *FAST,
                     "--set", "decontaminate.enabled=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decontaminate.inputs" in err[0]


def test_evaluation_inputs_parquet_and_hf_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"query": ["first query", None], "passage": ["a passage", "second passage"]}),
                   tmp_path / "beir.parquet")
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["hf text one", "hf text two"]})}
                         ).save_to_disk(str(tmp_path / "hf_eval"))
    files = decontaminate.evaluation_files([str(tmp_path / "beir.parquet"), str(tmp_path / "hf_eval")])
    assert [name for _, name in files] == ["beir.parquet", "hf_eval"]
    parquet = list(decontaminate.read_evaluation_file(files[0][0], "beir.parquet", ["query", "passage"]))
    assert parquet == [("beir.parquet:0", "first query"), ("beir.parquet:0", "a passage"),
                       ("beir.parquet:1", "second passage")]
    hf = list(decontaminate.read_evaluation_file(files[1][0], "hf_eval", ["text"]))
    assert hf == [("hf_eval:test:0", "hf text one"), ("hf_eval:test:1", "hf text two")]
