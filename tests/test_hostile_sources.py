"""Hostile inputs for the file-reading sources (quora, amazon, news, jsonl, parquet, hf), tried systematically.

Three layers:
- hypothesis over each source's row parser: any row -> exactly one pair or reject (several only where one row
  holds several pairs), never an exception, and every outcome serialises as a release line;
- hypothesis over the shared readers on raw bytes (plain or gzip, cut or whole): every non-blank physical line
  is accounted for by exactly one outcome;
- fixtures (50 MB lines, a gzip bomb, NUL, invalid UTF-8, lone surrogate escapes, truncated gzip, nested and
  huge-but-flat Python literals, CSV quote storms, archive members escaping their folder, files that only look
  like Parquet, bidi and control characters). Each is read in a forked child with a stated bound on its peak
  memory growth and its time (a hang is killed and fails the test); then a build per source runs end to end to
  check the exit status, the reject reasons in rejects/, that the release verifies, and that nothing is written
  outside the release.

docs/SECURITY.md tabulates what was tried and what happens.
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import os
import pickle
import resource
import select
import signal
import sys
import tarfile
import threading
import time
import traceback
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from pipelines.core.records import dumps_line
from pipelines.verify import verify_release
from sources.amazon import FORMATS as AMAZON_FORMATS, AmazonConfig, AmazonRows
from sources.base import RunContext, expand_inputs
from sources.generic import JsonlConfig, JsonLines, PairRows
from sources.news import AgNewsRows, ArticleFiles, CcNewsRows, NewsConfig, clean_agnews
from sources.quora import COLUMNS as QUORA_COLUMNS, QuoraConfig, QuoraRows
from sources.readers import (PAIR, REJECT, CsvRow, Emitter, FileUnit, RawLine, ReadCsv, ReadLines, ReadWholeFiles,
                             has_surrogates, parse_record)
from sources.registry import get_source
from tests.helpers import KEEP_TEXTS, release_rejects, release_rows, run_build

MB = 1 << 20
FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


# -- running a case in a forked child, bounded --------------------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def run_bounded(work: Callable[[], Any], *, max_seconds: float, max_growth_mb: float,
                cwd: Path | None = None, label: str = "") -> Any:
    """``work()`` in a forked child; returns its (picklable) result.

    The child starts with the parent's pages, so its peak RSS (ru_maxrss, which a fresh child starts at its
    current RSS) minus its RSS at the start is the memory the work itself took, whatever ran before in this
    process. Fails the test when the work raises, takes longer than ``max_seconds`` (the child is killed: a hang),
    or grows the peak by more than ``max_growth_mb``.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            if cwd is not None:
                os.chdir(cwd)
            start_mb, started = _rss_mb(), time.monotonic()
            try:
                payload = {"result": work()}
            except BaseException:
                payload = {"error": traceback.format_exc()[-3000:]}
            payload["seconds"] = time.monotonic() - started
            payload["growth_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_mb
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(payload, out)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], max_seconds)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"still running after {max_seconds} s: killed (a hang)")
        with os.fdopen(read_end, "rb", closefd=False) as stream:
            data = stream.read()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert data, "the child died without a result (killed for memory?)"
    payload = pickle.loads(data)
    assert "error" not in payload, payload.get("error")
    # Shown with -s (docs/SECURITY.md quotes these figures).
    print(f"[bounded] {label}: {payload['seconds']:.1f} s, peak +{payload['growth_mb']:.0f} MB "
          f"(bounds {max_seconds} s, {max_growth_mb} MB)", file=sys.stderr)
    assert payload["seconds"] < max_seconds
    assert payload["growth_mb"] < max_growth_mb, (
        f"peak memory grew by {payload['growth_mb']:.0f} MB (bound {max_growth_mb} MB)")
    return payload["result"]


def read_summary(source_name: str, paths: list[Path], **config: Any) -> dict[str, Any]:
    """Runs a source's reader without Beam and keeps a summary (outcomes are not held: bounded memory)."""
    source = get_source(source_name)
    transform = source.read(expand_inputs([str(path) for path in paths]), source.config_model(**config),
                            RunContext(source_name, KEEP_TEXTS))
    pairs, reasons, rejects = 0, collections.Counter(), []
    for kind, record in transform.run_local():
        dumps_line(record)  # every outcome must be writable as a release line
        if kind == PAIR:
            pairs += 1
        else:
            reasons[record["reason"]] += 1
            if len(rejects) < 40:
                rejects.append({"reason": record["reason"], "record": record["provenance"]["record"],
                                "detail": record["detail"], "raw_chars": len(record.get("raw") or "")})
    return {"pairs": pairs, "reasons": dict(reasons), "rejects": rejects}


# -- hypothesis: each parser, row by row ---------------------------------------------------------------------------

def _unit(fmt: str, dataset: str = "fuzz_pairs", **options: Any) -> FileUnit:
    return FileUnit("/fuzz/" + fmt, "fuzz/" + fmt, fmt=fmt, dataset=dataset, license="test",
                    options=tuple(options.items()))


def _check_outcomes(outcomes: list, *, exactly: int | None = 1) -> None:
    if exactly is not None:
        assert len(outcomes) == exactly, outcomes
    assert outcomes, "a row left without an outcome"
    for kind, record in outcomes:
        dumps_line(record)  # ASCII JSON, no NaN: what the release writer needs
        if kind == PAIR:
            assert isinstance(record["query"], str) and record["query"].strip()
            assert isinstance(record["document"], str) and record["document"].strip()
            record["query"].encode("utf-8")  # no surrogates: Beam's coders must be able to carry it
            record["document"].encode("utf-8")
        else:
            assert kind == REJECT and record["stage"] == "read" and isinstance(record["reason"], str)


_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
            | st.sampled_from(["", "  ", "Five Stars", "<br />x &amp; y", "\x00", "\ud800", "a\u202eb"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=12), inner, max_size=3), max_leaves=10)
_AMAZON_KEYS = ["summary", "reviewText", "title", "text", "question", "answer", "questions", "questionText",
                "answers", "answerText", "asin", "parent_asin", "overall", "rating", "vote", "verified"]
_RECORDS = st.dictionaries(st.sampled_from(_AMAZON_KEYS + ["query", "document", "id", "url", "domain"])
                           | st.text(max_size=6), _VALUES, max_size=6)
_LINES = st.one_of(
    st.text(max_size=300),
    _RECORDS.map(json.dumps),
    _RECORDS.map(repr),  # Python literals, as McAuley's Q&A files are written
    st.builds(lambda depth, opener: opener * depth, st.integers(900, 3000), st.sampled_from(["[", "{'a':", "-"])),
    st.sampled_from(['{"query": "\\ud800", "document": "x"}', "{'question': '\\udfff', 'answer': 'y'}",
                     '{"query": "a\\ud83d\\ude00", "document": "emoji pair"}', "{'question': 1e999}",
                     "{'question': " + "(" * 300 + ")" * 300 + "}", '{"id": ' + "9" * 5000 + "}"]),
)


@FUZZ
@given(_LINES, st.sampled_from(AMAZON_FORMATS))
def test_amazon_rows_total(line, fmt):
    rows = AmazonRows(AmazonConfig())
    dataset = "amazon_question_answer" if fmt.startswith("qa") else "amazon_title_review"
    outcomes = list(rows(line, RawLine(7, 0, b""), Emitter(_unit(fmt, dataset), "amazon", KEEP_TEXTS)))
    _check_outcomes(outcomes, exactly=None if fmt == "qa_multi" else 1)


@FUZZ
@given(_LINES)
def test_json_lines_and_ccnews_rows_total(line):
    raw = RawLine(3, 0, b"")
    _check_outcomes(list(JsonLines(JsonlConfig())(line, raw, Emitter(_unit("jsonl"), "jsonl", KEEP_TEXTS))))
    _check_outcomes(list(CcNewsRows(NewsConfig())(line, raw, Emitter(_unit("ccnews"), "news", KEEP_TEXTS))))


@FUZZ
@given(_RECORDS, st.sampled_from(["query", "meta.title", "document"]))
def test_columnar_rows_total(record, query_field):
    assume(not has_surrogates(repr(record)))  # Arrow strings are valid UTF-8: no surrogates reach this parser
    rows = PairRows(JsonlConfig(query_field=query_field))
    _check_outcomes([rows.outcome(record, "fuzz#1", Emitter(_unit("parquet"), "parquet", KEEP_TEXTS))])


# (Records with invalid UTF-8 or NUL bytes are rejected by the CSV reader before a parser sees them.)
_FIELD = st.one_of(st.text(max_size=60), st.sampled_from(["0", "1", " 1 ", "", '"', '""', "\x00", "\u202e"]))


@FUZZ
@given(st.lists(_FIELD, max_size=8), st.sampled_from(["shorter_first", "file_order", "both"]),
       st.sampled_from(["reject", "emit"]))
def test_quora_rows_total(fields, direction, non_duplicates):
    rows = QuoraRows(QuoraConfig(direction=direction, non_duplicates=non_duplicates))
    unit = _unit("quora_pairs", "quora_duplicates", columns=tuple((name, i) for i, name in enumerate(QUORA_COLUMNS)),
                 width=len(QUORA_COLUMNS))
    outcomes = list(rows(CsvRow(fields, 2, 2, "\t".join(fields)), Emitter(unit, "quora", KEEP_TEXTS)))
    _check_outcomes(outcomes, exactly=None)
    assert len(outcomes) == 1 or (len(outcomes) == 2 and direction == "both"
                                  and all(kind == PAIR for kind, _ in outcomes))


@FUZZ
@given(st.lists(_FIELD, max_size=5))
def test_agnews_rows_total(fields):
    outcomes = list(AgNewsRows(NewsConfig())(CsvRow(fields, 4, 5, ",".join(fields)), Emitter(_unit("agnews"), "news",
                                                                                             KEEP_TEXTS)))
    _check_outcomes(outcomes)
    assert isinstance(clean_agnews(",".join(fields)), str)


_ARTICLE = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(["[XSUM]URL[XSUM]", "[XSUM]INTRODUCTION[XSUM]", "[XSUM]RESTBODY[XSUM]", "[SN]X[SN]",
                              "@highlight", "\n", "\n\n", "Some words here.", " ", "\x00", "\u202e"]), max_size=30)
    .map("".join),
)


@FUZZ
@given(_ARTICLE, st.sampled_from(["xsum", "bbc", "cnn_dailymail"]))
def test_article_files_total(text, fmt):
    outcomes = list(ArticleFiles(NewsConfig())(text, Emitter(_unit(fmt), "news", KEEP_TEXTS)))
    _check_outcomes(outcomes)


@FUZZ
@given(st.text(max_size=300))
def test_parse_record_never_raises(text):
    record, problem = parse_record(text)
    assert (record is None) != (problem is None)


# -- hypothesis: the shared readers, on raw bytes ------------------------------------------------------------------

_BYTE_LINES = st.lists(st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"", b"\r", b"   ", b'{"query": "q", "document": "d"}', b"\xef\xbb\xbf{}", b"\xff\xfe",
                     b"\x00", b'{"query": "\\ud800", "document": "d"}']),
    st.binary(min_size=1100, max_size=1500),  # longer than max_line_bytes below: oversized_line
), max_size=25)


def _line_of(record: dict[str, Any]) -> list[int]:
    """The physical lines an outcome names (``name:line`` records, or detail lines [first, last])."""
    lines = record.get("detail", {}).get("lines") if isinstance(record.get("detail"), dict) else None
    if lines:
        return list(range(lines[0], lines[1] + 1))
    return [int(record["provenance"]["record"].rsplit(":", 1)[1])]


@FUZZ
@given(_BYTE_LINES, st.booleans(), st.sampled_from(["plain", "gzip", "gzip-cut", "gzip-flipped"]))
def test_line_reader_accounts_for_every_line(tmp_path_factory, lines, trailing_newline, form):
    """Every non-blank line leaves exactly one outcome; a cut or damaged gzip stream leaves one more reject."""
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    compress = form != "plain"
    payload = gzip.compress(data, mtime=0) if compress else data
    if form == "gzip-cut":
        payload = payload[: max(len(payload) // 2, 10)]
    elif form == "gzip-flipped":
        middle = len(payload) // 2
        payload = payload[:middle] + bytes([payload[middle] ^ 0x5A]) + payload[middle + 1:]
    path = tmp_path_factory.mktemp("lines") / ("in.jsonl.gz" if compress else "in.jsonl")
    path.write_bytes(payload)
    unit = FileUnit(str(path), path.name, fmt="jsonl", dataset="fuzz_pairs", license="test",
                    compression="gzip" if compress else "none")
    reader = ReadLines([unit], "jsonl", JsonLines(JsonlConfig(id_field=None)), max_line_bytes=1024, policy=KEEP_TEXTS)
    outcomes = list(reader.run_local())
    for outcome in outcomes:
        _check_outcomes([outcome])
    stream_problems = [record["reason"] for _, record in outcomes
                       if record.get("reason") in ("truncated_input", "corrupt_input")]
    named = collections.Counter(number for _, record in outcomes
                                if record.get("reason") not in ("truncated_input", "corrupt_input")
                                for number in _line_of(record))
    assert all(count == 1 for count in named.values()), named
    if form in ("plain", "gzip"):
        physical = data.split(b"\n")
        if data.endswith(b"\n"):
            physical = physical[:-1]
        assert set(named) == {number for number, line in enumerate(physical, start=1) if line.strip()}
        assert not stream_problems
    elif form == "gzip-cut":
        assert stream_problems == ["truncated_input"]
    else:
        assert len(stream_problems) == 1  # the CRC catches a flip that still inflates


_CSV_BYTES = st.lists(st.sampled_from([b'"', b",", b"\t", b"\n", b"\r\n", b"\r", b"a", b"1", b" ", b'""', b"\x00",
                                       b"\xff", b"\xef\xbb\xbf", b"x" * 700]), max_size=120).map(b"".join)


@FUZZ
@given(_CSV_BYTES, st.sampled_from([",", "\t"]))
def test_csv_reader_accounts_for_every_line(tmp_path_factory, data, delimiter):
    """Each physical line is covered by exactly one outcome, apart from blank lines outside records."""
    path = tmp_path_factory.mktemp("csv") / "in.csv"
    path.write_bytes(data)
    unit = FileUnit(str(path), path.name, fmt="fuzz", dataset="fuzz_pairs", license="test",
                    options=(("delimiter", delimiter),))

    def probe(row: CsvRow, emitter: Emitter):  # names the record's lines, so the accounting can be checked
        yield emitter.reject("probe", record=f"{unit.name}:{row.first_line}",
                             detail={"lines": [row.first_line, row.last_line]}, raw=row.raw)

    reader = ReadCsv([unit], "fuzz", probe, max_line_bytes=1024, max_field_chars=500, policy=KEEP_TEXTS)
    outcomes = list(reader.run_local())
    for outcome in outcomes:
        _check_outcomes([outcome])
    records = collections.Counter(number for _, record in outcomes if "lines" in record["detail"]
                                  for number in _line_of(record))
    assert all(count == 1 for count in records.values()), records  # no line in two records
    covered = set(records) | {number for _, record in outcomes for number in _line_of(record)}
    physical = data.split(b"\n")
    if data.endswith(b"\n"):
        physical = physical[:-1]
    for number, line in enumerate(physical, start=1):
        line = line[:-1] if line.endswith(b"\r") else line
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if line.strip(b"\r"):  # a line of carriage returns is blank to the csv module too
            assert number in covered, (number, line, outcomes)


@FUZZ
@given(st.lists(st.binary(max_size=300) | _ARTICLE.map(lambda text: text.encode("utf-8", "surrogatepass")),
                min_size=1, max_size=3), st.booleans())
def test_whole_file_reader_one_outcome_per_file(tmp_path_factory, contents, compress):
    folder = tmp_path_factory.mktemp("articles") / "business"
    folder.mkdir()
    units = []
    for index, content in enumerate(contents):
        path = folder / f"{index:03d}.txt"
        path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
        units.append(FileUnit(str(path), f"bbc/business/{path.name}", fmt="bbc", dataset="bbc_title_body",
                              license="test"))
    outcomes = list(ReadWholeFiles(units, "news", ArticleFiles(NewsConfig()), max_file_bytes=1024,
                                   policy=KEEP_TEXTS).run_local())
    for outcome in outcomes:
        _check_outcomes([outcome])
    assert sorted(record["provenance"]["record"] for _, record in outcomes) == sorted(u.name for u in units)


# -- fixtures, read in a bounded child ----------------------------------------------------------------------------

GOOD_JSONL = [{"id": f"good-{n}", "query": f"How do I tune a thing number {n}?",
               "document": f"Tune thing number {n} by turning the knob slowly until it hums."} for n in range(3)]
QUORA_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"


def _quora_row(number: int) -> str:
    return (f"{number}\t{2 * number}\t{2 * number + 1}\tHow can I learn topic {number} quickly?\t"
            f"What is the fastest way to learn topic {number}?\t1\n")


def _agnews_row(number: int) -> str:
    return f'"{1 + number % 4}","Headline number {number} today","A description of event {number} in words."\n'


def _review(number: int) -> str:
    return json.dumps({"overall": 5.0, "verified": True, "asin": f"B{number:09d}", "summary": f"Sturdy bag {number}",
                       "reviewText": f"The bag number {number} held up for a year of daily use."}) + "\n"


def _qa(number: int) -> str:
    return repr({"questionType": "yes/no", "asin": f"B{number:09d}", "question": f"Does model {number} fit?",
                 "answer": f"Yes, model {number} fits a standard opening."}) + "\n"


def _write_big_line(path: Path, before: str, prefix: bytes, filler: bytes, size: int, suffix: bytes,
                    after: str) -> None:
    """A file with one line of about ``size`` bytes between ordinary lines, written without holding it."""
    with open(path, "wb") as out:
        out.write(before.encode())
        out.write(prefix)
        block = filler * (MB // len(filler))
        for _ in range(size // len(block)):
            out.write(block)
        out.write(suffix + b"\n")
        out.write(after.encode())


def _expect(summary: dict[str, Any], pairs: int, reasons: dict[str, int]) -> None:
    assert summary["pairs"] == pairs, summary
    assert summary["reasons"] == reasons, summary


def test_fifty_megabyte_lines_are_rejected_without_being_held(tmp_path):
    """50 MB single lines in JSON lines, Amazon reviews, Quora TSV and AG News CSV: bound 100 MB, 60 s."""
    jsonl = tmp_path / "huge.jsonl"
    _write_big_line(jsonl, json.dumps(GOOD_JSONL[0]) + "\n", b'{"query": "q", "document": "', b"word ", 50 * MB,
                    b'"}', json.dumps(GOOD_JSONL[1]) + "\n")
    reviews = tmp_path / "reviews.json"
    _write_big_line(reviews, _review(1), b'{"summary": "s", "reviewText": "', b"long ", 50 * MB, b'"}', _review(2))
    quora = tmp_path / "quora.tsv"
    _write_big_line(quora, QUORA_HEADER + _quora_row(1), b'7\t8\t9\t"', b'""x', 50 * MB, b'"\tq\t1', _quora_row(2))
    agnews = tmp_path / "ag.csv"
    _write_big_line(agnews, _agnews_row(1), b'"2","t","', b"a,b ", 50 * MB, b'"', _agnews_row(2))
    for source, path in (("jsonl", jsonl), ("amazon", reviews), ("quora", quora), ("news", agnews)):
        summary = run_bounded(lambda: read_summary(source, [path]), max_seconds=60, max_growth_mb=100,
                              label=f"50 MB line, {path.name}")
        _expect(summary, 2, {"oversized_line": 1})
        [reject] = summary["rejects"]
        assert reject["detail"]["bytes"] > 50 * 1000 * 1000 and reject["raw_chars"] <= 2000


def test_gzip_bomb_line_is_bounded(tmp_path):
    """200 MB of one line inflated from ~200 KB of gzip: read chunk by chunk, bound 100 MB."""
    bomb = tmp_path / "bomb.jsonl.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(bomb, "wb") as out:
        out.write(compressor.compress((json.dumps(GOOD_JSONL[0]) + "\n").encode()))
        block = b"a" * MB
        for _ in range(200):
            out.write(compressor.compress(block))
        out.write(compressor.compress(b"\n" + json.dumps(GOOD_JSONL[1]).encode() + b"\n"))
        out.write(compressor.flush())
    assert bomb.stat().st_size < 1 * MB
    summary = run_bounded(lambda: read_summary("jsonl", [bomb]), max_seconds=60, max_growth_mb=100,
                          label="gzip bomb")
    _expect(summary, 2, {"oversized_line": 1})


def test_python_literals_deep_and_flat(tmp_path):
    """Amazon Q&A literals, deeply nested (1,000 and 100,000 brackets; a million unary minus signs) and huge but
    flat (a 4 MB list: ~1.9 GB of syntax tree before the token bound): all malformed_line, bound 150 MB, 30 s."""
    qa = tmp_path / "qa_Fuzz.json"
    nested = "{'question': " + "[" * 1000 + "]" * 1000 + ", 'answer': 'x'}\n"
    deep = "{'question': " + "[" * 100_000 + "]" * 100_000 + ", 'answer': 'x'}\n"
    flat = "{'question': 'Is it flat?', 'answer': [" + "1," * 1_990_000 + "]}\n"
    minus = "{'question': 'Negative?', 'answer': " + "-" * 1_000_000 + "1}\n"
    qa.write_text(_qa(1) + nested + deep + flat + minus + _qa(2))
    summary = run_bounded(lambda: read_summary("amazon", [qa]), max_seconds=30, max_growth_mb=150,
                          label="Python literals")
    _expect(summary, 2, {"malformed_line": 4})
    errors = [reject["detail"]["error"] for reject in summary["rejects"]]
    assert "too many nested parentheses" in errors[0]
    assert all("more than 100000 tokens" in error for error in errors[1:])


def test_csv_quote_storms(tmp_path):
    """Quote storms for Quora and AG News, bound 200 MB (60 MB for the first), 60 s:
    - lines `x"<TAB>"` keep one quoted record open whatever the state a parser starts in;
    - an unclosed quote at the top swallows what follows until the field limit, then reading recovers;
    - a line of 100,000 quotes and `""""` runs are ordinary malformed rows."""
    storm = tmp_path / "storm.tsv"
    with open(storm, "w") as out:
        out.write(QUORA_HEADER + _quora_row(1) + '7\t1\t2\t"\n')
        out.write('x"\t"\n' * MB)
    swallow = tmp_path / "swallow.tsv"
    swallow.write_text(QUORA_HEADER + '5\t9\t10\t"an unclosed question\tsecond\t1\n'
                       + "".join(_quora_row(n) for n in range(10, 20_010)))
    quotes = tmp_path / "quotes.tsv"
    quotes.write_text(QUORA_HEADER + _quora_row(1) + '"' * 100_000 + "\n" + '3\t4\t5\t""""\t""""""\t1\n'
                      + '""""""""\n' + _quora_row(2))

    # Records bounded at 256 KiB here: ~5 MB without the bound (~250 MB before records were bounded)
    summary = run_bounded(lambda: read_summary("quora", [storm], max_line_bytes=256 * 1024), max_seconds=60,
                          max_growth_mb=60, label="open quoted record")
    assert summary["pairs"] == 1 and summary["reasons"]["oversized_line"] >= 19  # one per 256 KiB of the record
    assert set(summary["reasons"]) <= {"oversized_line", "malformed_line"}  # + the unfinished end, malformed
    assert summary["rejects"][0]["detail"]["lines"][0] == 3

    summary = run_bounded(lambda: read_summary("quora", [swallow]), max_seconds=60, max_growth_mb=200,
                          label="unclosed quote")
    assert summary["reasons"] == {"oversized_field": 1}
    swallowed = summary["rejects"][0]["detail"]["lines"]
    assert swallowed[0] == 2 and summary["pairs"] == 20_000 - (swallowed[1] - 2)  # every other row is a pair

    summary = run_bounded(lambda: read_summary("quora", [quotes]), max_seconds=60, max_growth_mb=200,
                          label="quote runs")
    assert summary["pairs"] == 3  # the `""""` row parses: its questions are `"` and `""` (normalize drops them)
    assert summary["reasons"] == {"malformed_line": 2}

    # AG News quotes every field, so an unclosed quote ends at the next line's first quote: one record of two
    # lines; a line of 100,000 quotes and a `"""""""` run are one malformed row each.
    ag_storm = tmp_path / "ag_storm.csv"
    ag_storm.write_text(_agnews_row(1) + '"3","an unclosed title, and then the file\n'
                        + "".join(_agnews_row(n) for n in range(2, 9000)) + '"' * 100_000 + "\n"
                        + '"1",""""""","""\n')
    summary = run_bounded(lambda: read_summary("news", [ag_storm]), max_seconds=60, max_growth_mb=200,
                          label="AG News quote storm")
    _expect(summary, 8998, {"malformed_line": 3})
    assert [reject["detail"]["lines"] for reject in summary["rejects"]] == [[2, 3], [9001, 9001], [9002, 9002]]


def test_quoted_record_bound_at_small_limit(tmp_path):
    """A record spanning lines is bounded by max_line_bytes as a whole; reading restarts after it."""
    path = tmp_path / "spans.tsv"
    path.write_text(QUORA_HEADER + _quora_row(1) + '7\t1\t2\t"\n' + 'x"\t"\n' * 400 + '"\n' + _quora_row(2))
    summary = read_summary("quora", [path], max_line_bytes=1024)
    assert summary["reasons"]["oversized_line"] >= 1
    first = summary["rejects"][0]
    assert first["reason"] == "oversized_line" and first["detail"]["lines"][0] == 3
    assert first["detail"]["bytes"] <= 1024


# -- end-to-end builds per source ---------------------------------------------------------------------------------

def _gzip_cut(text: str) -> bytes:
    data = gzip.compress(text.encode(), mtime=0)
    return data[: len(data) * 2 // 3]


def _tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def build_bounded(tmp_path: Path, *args: str, max_seconds: float = 90, max_growth_mb: float = 400) -> int:
    """The build CLI in a forked child, run from an empty folder; checks it wrote nothing outside --output."""
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    output = Path(args[args.index("--output") + 1])
    before = {path for path in _tree(tmp_path) if not path.startswith(output.name)}
    status = run_bounded(lambda: run_build(*args), max_seconds=max_seconds, max_growth_mb=max_growth_mb,
                         cwd=workdir, label=f"build --source {args[args.index('--source') + 1]}")
    assert not list(workdir.iterdir()), "the build wrote into its working directory"
    after = {path for path in _tree(tmp_path) if not path.startswith(output.name)}
    assert after == before, f"written outside the release: {sorted(after - before)}"
    return status


def _reasons_by_input(release: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = collections.defaultdict(set)
    for reject in release_rejects(release):
        found[reject["provenance"]["input"].rsplit("/", 1)[-1]].add(reject["reason"])
    return found


def test_jsonl_build_with_hostile_files(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()

    def row(n: int, **fields: Any) -> str:
        return json.dumps({"id": f"r{n}", "query": f"query {n} text", "document": f"document {n} body words",
                           **fields}) + "\n"

    (inputs / "nul.jsonl").write_bytes((row(1) + row(2)).encode() + b'{"query": "a\x00b", "document": "c d e"}\n'
                                       + row(3, query="escaped \u0000 nul").encode())
    (inputs / "utf8.jsonl").write_bytes(row(4).encode() + b'{"query": "caf\xe9", "document": "latin-1 bytes"}\n')
    (inputs / "surrogate.jsonl").write_text(row(5) + '{"query": "\\ud800 lone", "document": "a lone surrogate"}\n'
                                            + '{"query": "\\ud83d\\ude00 pair", "document": "an escaped emoji"}\n')
    (inputs / "deep.jsonl").write_text(row(6) + "[" * 5000 + "]" * 5000 + "\n"
                                       + '{"query": ' + "[" * 300 + "]" * 300 + ', "document": "x y z"}\n')
    (inputs / "cut.jsonl.gz").write_bytes(_gzip_cut("".join(row(100 + n) for n in range(400))))
    hidden = [dict(row, query=row["query"].replace("tune", "t\u202eu\u200bn\u0007e\x1b")) for row in GOOD_JSONL]
    (inputs / "controls.jsonl").write_text("".join(json.dumps(row) + "\n" for row in hidden))
    out = tmp_path / "out"
    assert build_bounded(tmp_path, "--source", "jsonl", "--input", str(inputs), "--output", str(out), *FAST) == 0
    reasons = _reasons_by_input(out)
    assert reasons["nul.jsonl"] == {"nul_byte"}
    assert reasons["utf8.jsonl"] == {"invalid_utf8"}
    assert reasons["surrogate.jsonl"] == {"malformed_line"}
    assert reasons["deep.jsonl"] == {"malformed_line", "bad_field_type"}
    assert reasons["cut.jsonl.gz"] == {"truncated_input"}
    rows = release_rows(out, "custom_pairs")
    texts = {row["query"] for row in rows}
    assert "\U0001f600 pair" in texts  # an escaped surrogate pair is one character, kept
    assert sum(row["provenance"]["input"].endswith("cut.jsonl.gz") for row in rows) > 100  # kept before the cut
    controls = [row for row in rows if row["provenance"]["input"].endswith("controls.jsonl")]
    assert len(controls) == 3
    assert all(row["query"].startswith("How do I tune a thing") for row in controls)  # controls removed
    assert verify_release(str(out)) == []


def test_amazon_build_with_hostile_files(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "reviews.json").write_bytes((_review(1) + _review(2)).encode()
                                          + b'{"summary": "nul\x00", "reviewText": "x", "overall": 1}\n'
                                          + b'{"summary": "\xff\xfe", "reviewText": "x", "overall": 1}\n'
                                          + ("[" * 5000 + "]" * 5000 + "\n").encode() + _review(3).encode())
    (inputs / "qa_Hostile.json").write_text(_qa(1) + "{'question': " + "[" * 100_000 + "}\n"
                                            + "{'question': 'q', 'answer': '\\udfff'}\n" + _qa(2))
    (inputs / "qa_Cut.json.gz").write_bytes(_gzip_cut("".join(_qa(n) for n in range(10, 400))))
    out = tmp_path / "out"
    assert build_bounded(tmp_path, "--source", "amazon", "--input", str(inputs), "--output", str(out), *FAST) == 0
    reasons = _reasons_by_input(out)
    assert reasons["reviews.json"] == {"nul_byte", "invalid_utf8", "malformed_line"}
    assert reasons["qa_Hostile.json"] == {"malformed_line"}
    assert reasons["qa_Cut.json.gz"] == {"truncated_input"}
    assert len(release_rows(out, "amazon_title_review")) == 3
    assert len(release_rows(out, "amazon_question_answer")) > 100
    assert verify_release(str(out)) == []


def test_quora_build_with_hostile_files(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "bytes.tsv").write_bytes((QUORA_HEADER + _quora_row(1)).encode() + b"2\t3\t4\tnul\x00\tq\t1\n"
                                       + b"3\t5\t6\t\xc3\x28 broken\tq\t1\n" + _quora_row(2).encode()
                                       + b"\t\t\t\t\t\n")
    (inputs / "storm.tsv").write_text(QUORA_HEADER + _quora_row(3) + '"' * 100_000 + "\n"
                                      + '5\t9\t10\t"an unclosed question\tsecond\t1\n'
                                      + "".join(_quora_row(n) for n in range(10, 20_010)))
    (inputs / "cut.tsv.gz").write_bytes(_gzip_cut(QUORA_HEADER + "".join(_quora_row(n) for n in range(30_000, 30_400))))
    out = tmp_path / "out"
    assert build_bounded(tmp_path, "--source", "quora", "--input", str(inputs), "--output", str(out), *FAST) == 0
    reasons = _reasons_by_input(out)
    assert reasons["bytes.tsv"] == {"nul_byte", "invalid_utf8", "malformed_line"}  # the row of empty fields too
    assert reasons["storm.tsv"] == {"malformed_line", "oversized_field"}
    assert reasons["cut.tsv.gz"] == {"truncated_input"}
    [swallowed] = [r["detail"]["lines"] for r in release_rejects(out) if r["reason"] == "oversized_field"]
    assert swallowed[0] == 4  # from the unclosed quote on, until the field bound; every later row is a pair
    storm_rows = [row for row in release_rows(out, "quora_duplicates")
                  if row["provenance"]["input"].endswith("storm.tsv")]
    assert len(storm_rows) == 1 + (20_004 - swallowed[1])
    assert verify_release(str(out)) == []


def test_news_build_with_hostile_files(tmp_path):
    inputs = tmp_path / "inputs"
    (inputs / "ag").mkdir(parents=True)
    (inputs / "bbc" / "business").mkdir(parents=True)
    (inputs / "ag" / "test.csv").write_bytes((_agnews_row(1)).encode() + b'"1","nul \x00 title","d e f g"\n'
                                             + b'"2","bad \xed\xa0\x80 utf8","d e f g"\n'
                                             + ('"3","' + '"' * 50_000 + '\n').encode()
                                             + "".join(_agnews_row(n) for n in range(2, 9000)).encode())
    (inputs / "ag" / "train.csv.gz").write_bytes(_gzip_cut("".join(_agnews_row(n) for n in range(9000, 9400))))
    (inputs / "cc.jsonl").write_text(json.dumps({"title": "A title here", "text": "Some article text in words."})
                                     + "\n" + "[" * 5000 + "]" * 5000 + "\n")
    (inputs / "bbc" / "business" / "001.txt").write_text("Markets rise\n\nShares rose on Monday in busy trade.\n")
    (inputs / "bbc" / "business" / "002.txt").write_bytes(b"Nul\x00 headline\n\nBody text.\n")
    (inputs / "bbc" / "business" / "003.txt").write_bytes(b"Caf\xe9 headline\n\nBody text.\n")
    (inputs / "bbc" / "business" / "004.txt.gz").write_bytes(_gzip_cut("Cut headline\n\n" + "Body words. " * 2000))
    out = tmp_path / "out"
    assert build_bounded(tmp_path, "--source", "news", "--input", str(inputs), "--output", str(out), *FAST) == 0
    reasons = _reasons_by_input(out)
    assert reasons["test.csv"] == {"nul_byte", "invalid_utf8", "malformed_line"}  # + the 50,000-quote record
    assert reasons["train.csv.gz"] == {"truncated_input"}
    assert reasons["cc.jsonl"] == {"malformed_line"}
    assert reasons["002.txt"] == {"nul_byte"} and reasons["003.txt"] == {"invalid_utf8"}
    assert reasons["004.txt.gz"] == {"truncated_input"}
    agnews = release_rows(out, "agnews_title_description")
    assert sum(row["provenance"]["input"].endswith("test.csv") for row in agnews) == 8998  # the quote ate one row
    assert sum(row["provenance"]["input"].endswith("train.csv.gz") for row in agnews) > 100  # kept before the cut
    assert len(release_rows(out, "bbc_title_body")) == 1
    assert verify_release(str(out)) == []


def test_parquet_that_is_not_parquet(tmp_path, capsys):
    good = tmp_path / "inputs" / "good.parquet"
    good.parent.mkdir()
    pq.write_table(pa.table({"id": [f"p{n}" for n in range(50)],
                             "query": [f"question {n} here" for n in range(50)],
                             "document": [f"an answer {n} with words" for n in range(50)]}), good, row_group_size=10)
    (tmp_path / "inputs" / "garbage.parquet").write_bytes(b"PAR1" + os.urandom(5000) + b"PAR1")
    (tmp_path / "inputs" / "cut.parquet").write_bytes(good.read_bytes()[:-300])
    out = tmp_path / "out"
    assert build_bounded(tmp_path, "--source", "parquet", "--input", str(tmp_path / "inputs"), "--output",
                         str(out), *FAST) == 0
    reasons = _reasons_by_input(out)
    assert reasons == {"garbage.parquet": {"corrupt_input"}, "cut.parquet": {"truncated_input"}}
    assert len(release_rows(out, "custom_pairs")) == 50
    assert verify_release(str(out)) == []

    text = tmp_path / "text.parquet"
    text.write_text("id,query,document\n1,q,d\n")
    status, message = _cli_error(capsys, "--source", "parquet", "--input", str(text), "--output", str(tmp_path / "o2"))
    assert status == 2 and message == f"error: unknown format: {text} is not a Parquet file"


def _cli_error(capsys, *args: str) -> tuple[int, str]:
    """Exit status and error line of a build expected to stop before running: one line, no traceback."""
    capsys.readouterr()
    status = run_build(*args, *FAST)
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert all("%|" in line for line in lines if line not in errors), stderr[-3000:]  # a download's progress bar
    return status, errors[0]


def test_fifty_megabyte_first_line_stops_with_one_line(tmp_path, capsys):
    """A format cannot be recognised from a first line that does not fit the sniffing window: the run stops
    with one line naming the file (the same line for a file that is not JSON lines at all)."""
    path = tmp_path / "first.jsonl"
    _write_big_line(path, "", b'{"query": "', b"word ", 50 * MB, b'", "document": "d"}', json.dumps(GOOD_JSONL[0]))
    status, message = _cli_error(capsys, "--source", "jsonl", "--input", str(path), "--output", str(tmp_path / "out"))
    assert status == 2 and message.startswith(f"error: unknown format: {path} is not JSON lines")


# -- archives from a download: members that escape their folder ----------------------------------------------------

class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def file_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _tar(members: list[tarfile.TarInfo]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for info in members:
            data = b"Escaped headline\n\nEscaped body.\n"
            if info.isreg():
                info.size = len(data)
            bundle.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_archive_members_escaping_the_folder_stop_the_run(tmp_path, file_server, capsys):
    article = b"Headline\n\nBody text of the article.\n"
    escape_name = f"escaped-{os.getpid()}.txt"
    archives = {
        "/dotdot.zip": _zip({"bbc/business/001.txt": article, f"../../{escape_name}": article}),
        "/absolute.zip": _zip({"bbc/business/001.txt": article, f"/tmp/{escape_name}": article}),
        "/dotdot.tar.gz": _tar([tarfile.TarInfo(f"bbc/../../{escape_name}")]),
        "/symlink.tar.gz": _tar([_link("bbc/business/002.txt", "/etc/passwd")]),
        "/hardlink.tar.gz": _tar([_link("bbc/business/003.txt", "/etc/passwd", tarfile.LNKTYPE)]),
    }
    _Files.files = archives
    for path in archives:
        cache = tmp_path / ("cache" + path.replace("/", "_"))
        status, message = _cli_error(capsys, "--source", "news", "--output", str(tmp_path / "out"),
                                     "--set", f"download.cache_dir={cache}",
                                     "--set", f"source.urls=['{file_server}{path}']")
        assert status == 2 and message.startswith("error: unsafe"), (path, message)
        extracted = cache / "extracted"
        assert not extracted.exists() or not any(p.is_file() for p in extracted.rglob("*")), path
    assert not any(tmp_path.rglob(escape_name)) and not any(tmp_path.parent.rglob(escape_name))
    assert not (Path("/tmp") / escape_name).exists()
    assert not (tmp_path / "out" / "manifest.json").exists()


# -- bidi and control characters ----------------------------------------------------------------------------------

BIDI_ISOLATES = "\u2066\u2067\u2068\u2069"  # LRI RLI FSI PDI (Trojan Source, CVE-2021-42574)


@pytest.mark.parametrize("marks", [
    pytest.param("\u202a\u202b\u202c\u202d\u202e", id="bidi-embeddings-overrides"),
    pytest.param("\u0000\u0007\u0008\u001b\u007f\u0085\u009b", id="c0-c1-controls"),
    pytest.param("\u200b\u200c\u200d\u2060\ufeff", id="zero-width"),
    pytest.param(BIDI_ISOLATES, id="bidi-isolates"),
])
def test_normalize_removes_invisible_controls(marks):
    from filters.normalize import normalize_text
    from pipelines.core.config import NormalizeConfig

    text = "".join(f"word{n}{mark}" for n, mark in enumerate(marks)) + " end"
    cleaned = normalize_text(text, NormalizeConfig())
    assert not set(cleaned) & set(marks), repr(cleaned)
    assert cleaned.startswith("word0")
