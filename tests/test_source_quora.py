"""--source quora on the real sample (Beam) and on hand-made bad inputs."""

from __future__ import annotations

import collections
import gzip

import pytest

from sources.base import InputError, RunContext, expand_inputs
from sources.quora import DUPLICATES, NON_DUPLICATES, QuoraConfig, read
from tests.helpers import KEEP_TEXTS, run_read_transform
from sources.readers import split_outcomes
from sources.registry import get_source

run_beam = run_read_transform


def _sample(shared_data):
    return expand_inputs([str(shared_data / "quora" / "mini_quora_duplicate_questions.tsv")])


def test_real_sample_accounts_for_every_record(shared_data):
    pairs, rejects = run_beam(read(_sample(shared_data), QuoraConfig(), RunContext("quora", KEEP_TEXTS)))
    assert get_source("quora").read is read
    not_duplicate = [r for r in rejects if r["reason"] == "not_duplicate"]
    other_rejects = [r for r in rejects if r["reason"] != "not_duplicate"]
    assert {pair["dataset"] for pair in pairs} == {DUPLICATES}
    assert {r["dataset"] for r in rejects} == {DUPLICATES}
    # The 3,710 duplicates are all kept or rejected with a reason; the 6,288 others are counted as not_duplicate.
    assert len(pairs) + len(other_rejects) == 3710
    assert len(not_duplicate) == 6288
    assert len(pairs) + len(rejects) == 9998
    # Every record appears exactly once, by its Quora id.
    ids = [p["provenance"]["record"] for p in pairs] + [r["provenance"]["record"] for r in rejects]
    assert len(set(ids)) == 9998
    assert len({pair["id"] for pair in pairs}) == len(pairs)
    sample = pairs[0]["provenance"]
    assert sample["input"] == "mini_quora_duplicate_questions.tsv"
    assert sample["license"] == "Quora terms (non-commercial)"


def test_record_with_embedded_newline_and_escaped_quotes(shared_data):
    pairs, rejects = split_outcomes(read(_sample(shared_data), QuoraConfig(), RunContext("quora",
                                                                                         KEEP_TEXTS)).run_local())
    by_id = {row["provenance"]["record"]: row for row in pairs + rejects}
    newline_record = by_id["2332"]
    assert newline_record["reason"] == "not_duplicate"
    texts = {newline_record["query"], newline_record["document"]}
    assert "Which is the best RO water purifier in Ahmedabad?\n" in texts
    assert newline_record["provenance"]["line"] == 2334
    # The record after it starts on the line after the quoted newline.
    assert by_id["2333"]["provenance"]["line"] == 2336
    # "" inside a quoted field is one quote.
    assert 'When do you use "&" instead of "and"?' in {by_id["8"]["query"], by_id["8"]["document"]}


def test_direction_rules(shared_data):
    inputs = _sample(shared_data)
    shorter, _ = split_outcomes(read(inputs, QuoraConfig(), RunContext("quora", KEEP_TEXTS)).run_local())
    for pair in shorter:
        assert len(pair["query"].strip()) <= len(pair["document"].strip())
    in_order, _ = split_outcomes(read(inputs, QuoraConfig(direction="file_order"), RunContext("q",
                                                                                              KEEP_TEXTS)).run_local())
    assert any(len(p["query"].strip()) > len(p["document"].strip()) for p in in_order)
    both, _ = split_outcomes(read(inputs, QuoraConfig(direction="both"), RunContext("q", KEEP_TEXTS)).run_local())
    assert len(both) == 2 * len(shorter)
    assert len({pair["id"] for pair in both}) == len(both)


def test_non_duplicates_can_be_emitted_as_labelled_pairs(shared_data):
    config = QuoraConfig(non_duplicates="emit")
    pairs, rejects = split_outcomes(read(_sample(shared_data), config, RunContext("quora", KEEP_TEXTS)).run_local())
    counts = collections.Counter(pair["dataset"] for pair in pairs)
    assert counts[NON_DUPLICATES] == 6288
    assert counts[DUPLICATES] + sum(r["dataset"] == DUPLICATES for r in rejects) == 3710
    assert all(p["provenance"]["is_duplicate"] is False for p in pairs if p["dataset"] == NON_DUPLICATES)
    assert not any(r["reason"] == "not_duplicate" for r in rejects)


BAD_ROWS = [
    b"id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
    b"0\t1\t2\tHow do I learn Python fast?\tWhat is the fastest way to learn Python?\t1",
    b'1\t3\t4\t"He said ""hi"" twice"\t"What does ""hi""\nmean?"\t1',
    b"2\t5\t6\tonly four\tfields",
    b"3\t7\t8\tA question?\tAnother?\tmaybe",
    b"4\t9\t10\t   \tAnother question here?\t1",
    b"5\t11\t12\tBad \xff\xfe bytes?\tFine question?\t1",
    b"6\t13\t14\tNUL \x00 here?\tFine question?\t1",
    b"7\t15\t16\t" + b"x" * 3000 + b"\tFine?\t1",
    b"8\t17\t18\tWhat is up?\tHow are you?\t0",
    b"",
    b"9\t19\t20\tLast one?\tThe final question?\t1",
]


def test_bad_rows_become_rejects_with_reasons(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"\n".join(BAD_ROWS) + b"\n")
    pairs, rejects = run_beam(read(expand_inputs([str(path)]), QuoraConfig(max_field_chars=1000),
                                   RunContext("quora", KEEP_TEXTS)))
    assert sorted(p["provenance"]["record"] for p in pairs) == ["0", "1", "9"]
    reasons = collections.Counter(r["reason"] for r in rejects)
    assert reasons == {"malformed_line": 2, "empty_text": 1, "invalid_utf8": 1, "nul_byte": 1,
                       "oversized_field": 1, "not_duplicate": 1}
    quoted = next(p for p in pairs if p["provenance"]["record"] == "1")
    assert quoted["query"] == 'He said "hi" twice' and quoted["document"] == 'What does "hi"\nmean?'


def test_truncated_gzip_keeps_readable_rows_and_records_the_cut(tmp_path):
    rows = [BAD_ROWS[0]] + [f"{i}\t{2 * i}\t{2 * i + 1}\tQuestion number {i}?\tAnother question {i}?\t1".encode()
                            for i in range(2000)]
    whole = gzip.compress(b"\n".join(rows) + b"\n")
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    pairs, rejects = split_outcomes(read(expand_inputs([str(path)]), QuoraConfig(), RunContext("q",
                                                                                               KEEP_TEXTS)).run_local())
    truncated = [r for r in rejects if r["reason"] == "truncated_input"]
    assert len(truncated) == 1 and len(rejects) == 1
    assert 0 < len(pairs) < 2000
    assert truncated[0]["detail"]["complete_lines_before"] == len(pairs) + 1  # + the header


def test_kaggle_comma_variant(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('"id","qid1","qid2","question1","question2","is_duplicate"\n'
                    '"0","1","2","Why is the sky blue?","What makes the sky blue?","1"\n'
                    '"1","3","4","A ""quoted"" word, with a comma?","Plain question here?","1"\n', encoding="utf-8")
    pairs, rejects = split_outcomes(read(expand_inputs([str(path)]), QuoraConfig(), RunContext("q",
                                                                                               KEEP_TEXTS)).run_local())
    assert not rejects
    assert {p["query"] for p in pairs} == {"Why is the sky blue?", "Plain question here?"}


def test_unknown_format_stops_at_once(tmp_path):
    path = tmp_path / "other.tsv"
    path.write_text("a\tb\tc\n1\t2\t3\n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        read(expand_inputs([str(path)]), QuoraConfig(), RunContext("quora", KEEP_TEXTS))
    assert "unknown format" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError):
        expand_inputs([str(tmp_path / "missing.tsv")])
