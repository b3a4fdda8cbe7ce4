"""--source amazon on the real samples (2014, 2018 reviews; 2016 Q&A) and hand-made 2023, multi-answer and bad
inputs."""

from __future__ import annotations

import collections
import gzip
import json

import pytest

from sources.amazon import QUESTION_ANSWER, TITLE_REVIEW, AmazonConfig, read
from sources.base import InputError, RunContext, expand_inputs
from tests.helpers import KEEP_TEXTS, run_read_transform
from sources.readers import split_outcomes

run_beam = run_read_transform


def run_local(paths, config=None):
    transform = read(expand_inputs([str(path) for path in paths]), config or AmazonConfig(), RunContext("amazon",
                                                                                                        KEEP_TEXTS))
    return split_outcomes(transform.run_local())


def _lines_of(rows, name):
    """The line numbers each outcome names, for one input file."""
    numbers = []
    for row in rows:
        record = row["provenance"]["record"]
        if row["provenance"]["input"].endswith(name):
            numbers.append(int(record.rsplit(":", 1)[1]))
    return numbers


def test_real_samples_every_line_accounted_for(shared_data):
    pairs, rejects = run_beam(read(expand_inputs([str(shared_data / "amazon")]), AmazonConfig(),
                                   RunContext("amazon", KEEP_TEXTS)))
    rows = pairs + rejects
    fashion = sorted(_lines_of(rows, "AMAZON_FASHION_5.json"))
    assert fashion == list(range(1, 3177))  # 3,176 lines, each exactly once
    qa = sorted(_lines_of(rows, "qa_Appliances.json.gz"))
    assert qa == list(range(1, 9012))  # 9,011 questions, each exactly once
    assert sorted(_lines_of(rows, "test.json")) == list(range(1, 15))

    by_dataset = collections.Counter((row["dataset"], "pair" if "query" in row and "stage" not in row
                                      else row.get("reason")) for row in rows)
    assert by_dataset[(QUESTION_ANSWER, "pair")] == 9011
    reasons = collections.Counter(r["reason"] for r in rejects)
    assert reasons["missing_field"] == 16  # the 2018 reviews without reviewText
    assert reasons["uninformative_title"] > 900  # "Five Stars" and the like
    assert all(r["dataset"] == TITLE_REVIEW for r in rejects)
    formats = collections.Counter(p["provenance"]["format"] for p in pairs)
    assert set(formats) == {"reviews_2018", "reviews_2014", "qa"}
    assert all(p["provenance"]["license"] == "research use (McAuley et al.)" for p in pairs)
    assert not any("reviewerID" in p["provenance"] or "reviewerName" in p["provenance"] for p in pairs)


def test_quirks_of_the_real_files(shared_data):
    pairs, rejects = run_local([shared_data / "amazon" / "reviews_2014_excerpt" / "test.json",
                                shared_data / "amazon" / "qa_2016" / "qa_Appliances.json.gz"])
    reviews = [p for p in pairs if p["dataset"] == TITLE_REVIEW]
    assert len(reviews) + len(rejects) == 14
    assert reviews[0]["query"] == "Enya's last great album"
    assert not any("&quot;" in p["document"] for p in reviews)  # entities decoded
    answers = [p for p in pairs if p["dataset"] == QUESTION_ANSWER]
    assert len(answers) == 9011
    assert not any("&amp;" in p["document"] for p in answers)
    first = next(p for p in answers if p["provenance"]["record"].endswith(":1"))
    assert first["query"].startswith("I have a 9 year old Badger 1")
    assert first["provenance"]["asin"] == "B00004U9JP"


def test_uninformative_title_rule_is_configurable(shared_data):
    path = shared_data / "amazon" / "reviews_2018_5core" / "AMAZON_FASHION_5.json"
    default_pairs, default_rejects = run_local([path])
    assert not any(p["query"] == "Five Stars" for p in default_pairs)
    five = [r for r in default_rejects if r["reason"] == "uninformative_title" and r["query"] == "Five Stars"]
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(five) == sum(r["summary"] == "Five Stars" and "reviewText" in r for r in records) > 900
    # Reviews repeated across product variants are all read (exact dedup removes the repeats later).
    documents = {p["document"] for p in default_pairs} | {r["document"] for r in default_rejects
                                                          if r["reason"] == "uninformative_title"}
    assert len(documents) == len({r["reviewText"] for r in records if "reviewText" in r}) < 500
    keep_all, rejects = run_local([path], AmazonConfig(uninformative_titles=[]))
    assert len(keep_all) == 3160 and {r["reason"] for r in rejects} == {"missing_field"}


def _jsonl(path, records, compress=False):
    data = b"".join(json.dumps(record).encode() + b"\n" for record in records)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_reviews_2023_and_multi_answer_qa(tmp_path):
    review = {"rating": 5.0, "title": "Sturdy and light", "text": "Held up well.<br />Would buy again.<br/>Yes.",
              "images": [], "asin": "B01", "parent_asin": "B00P", "user_id": "U1", "timestamp": 1588687728923,
              "helpful_vote": 2, "verified_purchase": True}
    reviews = _jsonl(tmp_path / "All_Beauty.jsonl", [review, dict(review, text="")])
    multi = tmp_path / "QA_Tools.json.gz"
    record = {"asin": "X1", "questions": [
        {"questionText": "Does it fit a 2 inch pipe?", "answers": [{"answerText": "Yes it does."},
                                                                    {"answerText": "  "}]},
        {"questionText": "Is it loud?", "answers": []}]}
    multi.write_bytes(gzip.compress((repr(record) + "\n").encode()))
    pairs, rejects = run_local([reviews, multi])
    by_format = collections.defaultdict(list)
    for pair in pairs:
        by_format[pair["provenance"]["format"]].append(pair)
    [review_pair] = by_format["reviews_2023"]
    assert review_pair["document"] == "Held up well.\nWould buy again.\nYes."
    assert review_pair["provenance"]["asin"] == "B00P"
    [qa_pair] = by_format["qa_multi"]
    assert (qa_pair["query"], qa_pair["document"]) == ("Does it fit a 2 inch pipe?", "Yes it does.")
    assert qa_pair["provenance"]["record"].endswith(":1/q0/a0")
    reasons = sorted((r["dataset"], r["reason"], r["provenance"]["record"].split(":")[-1]) for r in rejects)
    assert reasons == [(QUESTION_ANSWER, "empty_text", "1/q0/a1"), (QUESTION_ANSWER, "missing_field", "1/q1"),
                       (TITLE_REVIEW, "empty_text", "2")]


def test_bad_lines_and_python_literals_are_never_evaluated(tmp_path):
    good = "{'question': 'Does it hum?', 'answer': 'A little.', 'asin': 'A1'}"
    lines = [
        good.encode(),
        b"{'question': __import__('os').system('touch PWNED'), 'answer': 'x', 'asin': 'A2'}",
        b"{'question': 'Cut short', 'answ",
        b"{'question': 'Bad bytes \xff', 'answer': 'x', 'asin': 'A3'}",
        b"{'question': 'NUL \x00', 'answer': 'x', 'asin': 'A4'}",
        b"{'question': 'Long', 'answer': '" + b"y" * 5000 + b"', 'asin': 'A5'}",
        b"[1, 2, 3]",
        b"{'question': 'No answer here?', 'asin': 'A6'}",
        b"{'question': 42, 'answer': 'number question', 'asin': 'A7'}",
        good.encode(),
    ]
    path = tmp_path / "qa_Odd.json"
    path.write_bytes(b"\n".join(lines) + b"\n")
    pairs, rejects = run_local([path], AmazonConfig(max_line_bytes=4096))
    assert not (tmp_path / "PWNED").exists()
    assert len(pairs) == 2 and len(pairs) + len(rejects) == len(lines)
    reasons = [r["reason"] for r in sorted(rejects, key=lambda r: int(r["provenance"]["record"].split(":")[-1]))]
    assert reasons == ["malformed_line", "malformed_line", "invalid_utf8", "nul_byte", "oversized_line",
                       "malformed_line", "missing_field", "bad_field_type"]


def test_truncated_gzip_and_split_plain_reads(tmp_path, shared_data):
    records = [{"reviewerID": f"R{i}", "asin": "A", "summary": f"Title number {i}", "reviewText": f"Review {i} " * 20,
                "overall": 4.0} for i in range(3000)]
    whole = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    cut = tmp_path / "reviews_cut.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    pairs, rejects = run_local([cut])
    assert [r["reason"] for r in rejects] == ["truncated_input"]
    assert rejects[0]["detail"]["complete_lines_before"] == len(pairs) > 0

    plain = shared_data / "amazon" / "reviews_2018_5core" / "AMAZON_FASHION_5.json"
    whole_pairs, whole_rejects = run_local([plain])
    config = AmazonConfig().model_copy(update={"split_bytes": 100_000})
    transform = read(expand_inputs([str(plain)]), config, RunContext("amazon", KEEP_TEXTS))
    assert len(transform.units) > 10
    split_pairs, split_rejects = split_outcomes(transform.run_local())
    assert sorted(p["id"] for p in split_pairs) == sorted(p["id"] for p in whole_pairs)
    assert sorted(r["id"] for r in split_rejects) == sorted(r["id"] for r in whole_rejects)


def test_format_detection_and_override(tmp_path):
    unknown = _jsonl(tmp_path / "other.json", [{"name": "x", "value": 1}] * 3)
    with pytest.raises(InputError) as error:
        read(expand_inputs([str(unknown)]), AmazonConfig(), RunContext("amazon", KEEP_TEXTS))
    assert "unknown format" in str(error.value) and "\n" not in str(error.value)
    forced = _jsonl(tmp_path / "forced.json", [{"title": "T", "text": "Some text here"}])
    pairs, _ = run_local([forced], AmazonConfig(format="reviews_2023"))
    assert pairs[0]["provenance"]["format"] == "reviews_2023"
    compressed = tmp_path / "x.json.bz2"
    compressed.write_bytes(b"BZh91AY&SY" + b"\x00" * 20)
    with pytest.raises(InputError, match="bzip2"):
        read(expand_inputs([str(compressed)]), AmazonConfig(), RunContext("amazon", KEEP_TEXTS))
