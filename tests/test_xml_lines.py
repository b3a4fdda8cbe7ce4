"""XML markup state across lines of a one-row-per-line dump: comments, CDATA and processing instructions,
split reads that agree with whole-file reads, runs of non-row lines collapsed, UTF-16/32 refused."""

from __future__ import annotations

import apache_beam as beam
import pytest

from sources.base import InputError, RunContext, expand_inputs
from sources.stackexchange import StackExchangeSourceConfig, read
from sources.xml_lines import BLOCK_LINES, CDATA, COMMENT, PI, TEXT, scan_line, wide_encoding
from tests.helpers import KEEP_TEXTS, run_build, run_read_transform

FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")


def question(post_id: int) -> str:
    return (f'<row Id="{post_id}" PostTypeId="1" Score="2" CreationDate="2020-01-01T00:00:00" '
            f'Title="Question number {post_id} about pools" '
            f'Body="&lt;p&gt;Body of question {post_id}, long enough to keep.&lt;/p&gt;" />')


def dump(lines: list[str]) -> bytes:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "".join(f"  {line}\n" for line in lines)
            + "</posts>\n").encode()


class _WithRowRejects(beam.PTransform):
    """The read, with rows that could not be read (``row_rejects``) among the rejects."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def expand(self, pbegin):
        result = pbegin | "Inner" >> self.inner
        return {"pairs": result["pairs"],
                "rejects": (result["rejects"], result["row_rejects"]) | "AllRejects" >> beam.Flatten()}


def read_site(folder, **config):
    inputs = expand_inputs([str(folder)])
    pairs, rejects = run_read_transform(_WithRowRejects(read(
        inputs, StackExchangeSourceConfig(question_answer=False, duplicates=False, **config),
        RunContext(source_name="stackexchange", policy=KEEP_TEXTS))))
    return sorted(pair["provenance"]["post_ids"][0] for pair in pairs), rejects


@pytest.mark.parametrize("line, start, end", [
    ("<!-- a comment", TEXT, COMMENT),
    ("still inside --> <row Id='1' />", COMMENT, TEXT),
    ("<![CDATA[ <row Id='2' />", TEXT, CDATA),
    ("]]> <?pi open", CDATA, PI),
    ('<row Body="a &lt; <!-- not a comment in a quoted value" />', TEXT, TEXT),
    ("<row Id='3' /> <!-- one line -->", TEXT, TEXT),
    ('<row Body="unbalanced />', TEXT, TEXT),  # tags and quotes end with their line
])
def test_scan_line(line, start, end):
    assert scan_line(line.encode(), start) == end


def test_rows_inside_multiline_comment_cdata_or_pi_are_not_pairs(tmp_path):
    site = tmp_path / "regions.stackexchange.com"
    site.mkdir()
    (site / "Posts.xml").write_bytes(dump([
        question(1), "<!--", question(2), question(3), "-->",
        question(4), "<![CDATA[", question(5), "]]>",
        "<?hidden", question(6), "?>", question(7)]))
    kept, rejects = read_site(site)
    assert kept == ["1", "4", "7"]
    regions = sorted((r["reason"], r["detail"]["first_line"], r["detail"]["last_line"], r["detail"]["lines"])
                     for r in rejects)
    assert regions == [("inside_cdata_section", 9, 11, 3), ("inside_processing_instruction", 12, 14, 3),
                       ("inside_xml_comment", 4, 7, 4)]


def test_a_split_read_agrees_with_a_whole_file_read(tmp_path):
    lines = []
    for index in range(1, 200):
        lines.append(question(index))
        if index % 37 == 0:  # comments and CDATA spanning many lines (and range boundaries)
            lines.append("<!-- begin")
        if index % 37 == 20:
            lines.append("end -->")
        if index % 53 == 0:
            lines.extend(["<a>", "<b>", "<c>"])
    site = tmp_path / "split.stackexchange.com"
    site.mkdir()
    (site / "Posts.xml").write_bytes(dump(lines))

    def key(reject):
        return reject["reason"], reject["detail"].get("first_line"), reject["detail"].get("lines")

    whole_pairs, whole_rejects = read_site(site)
    split_pairs, split_rejects = read_site(site, split_bytes=1024)
    assert len(whole_pairs) < 199  # the comments hid rows
    assert whole_pairs == split_pairs
    assert sorted(map(key, whole_rejects)) == sorted(map(key, split_rejects))
    assert any(r["reason"] == "inside_xml_comment" for r in whole_rejects)


def test_runs_of_non_row_lines_collapse_into_one_reject_each(tmp_path):
    site = tmp_path / "nested.stackexchange.com"
    site.mkdir()
    count = BLOCK_LINES + 5000  # crosses a block boundary: two rejects
    (site / "Posts.xml").write_bytes(dump([question(1)] + ["<a>"] * count + [question(2)]))
    kept, rejects = read_site(site, split_bytes=64 * 1024)
    assert kept == ["1", "2"]
    assert sorted((r["reason"], r["detail"]["lines"]) for r in rejects) == [
        ("unexpected_line", 5004), ("unexpected_line", BLOCK_LINES - 4)]
    assert sum(r["detail"]["lines"] for r in rejects) == count


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_dumps_are_refused_with_one_line(tmp_path, capsys, encoding):
    site = tmp_path / "wide.stackexchange.com"
    site.mkdir()
    text = dump([question(1)]).decode().replace('encoding="utf-8"', f'encoding="{encoding}"')
    data = text.encode(encoding)
    (site / "Posts.xml").write_bytes(data)
    assert wide_encoding(data[:4])
    with pytest.raises(InputError, match="convert it to UTF-8"):
        read(expand_inputs([str(site)]), StackExchangeSourceConfig(), RunContext(source_name="stackexchange", policy=KEEP_TEXTS))
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(tmp_path / "out"),
                     *FAST) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "UTF-8" in err[0]
    assert not (tmp_path / "out").exists()


def test_an_input_with_no_pairs_but_rejects_is_warned_about(tmp_path, capsys):
    good = tmp_path / "dumps" / "good.stackexchange.com"
    bad = tmp_path / "dumps" / "bad.stackexchange.com"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    (good / "Posts.xml").write_bytes(dump([question(1), question(2)]))
    (bad / "Posts.xml").write_bytes(dump(["<a>"] * 1000 + ["<!--", question(3), "-->"]))
    out = tmp_path / "out"
    assert run_build("--source", "stackexchange", "--input", str(good), "--input", str(bad), "--output", str(out),
                     *FAST) == 0
    captured = capsys.readouterr()
    expected = "input bad.stackexchange.com/Posts.xml gave no pairs: 1003 row(s) rejected"
    assert expected in captured.err and expected in captured.out
    assert expected in (out / "README.md").read_text()
    assert "input good.stackexchange.com/Posts.xml gave no pairs" not in captured.err


FRAGMENTS = ["<row Id='1' />", "<!--", "-->", "<![CDATA[", "]]>", "<?pi", "?>", "<a>", "text", '"', "'", "<",
             ">", " ", "<row Body=\"<!--\" />"]


def classify_file(path, split: int | None):
    """(line, kind) for every line, from a whole-file read or from byte ranges of ``split`` bytes."""
    from sources.readers import iter_lines
    from sources.xml_lines import Piece, classify_lines, scan_range, start_of

    size = path.stat().st_size
    bounds = [(0, None)] if split is None else [(start, min(start + split, size))
                                                for start in range(0, size, split)]
    scans = {index: scan_range(str(path), start, end, 1 << 20)
             for index, (start, end) in enumerate(bounds) if end is not None}
    out = []
    for index, (start, end) in enumerate(bounds):
        state, first = start_of(index, scans)
        for item in classify_lines("f", iter_lines(str(path), start=start, end=end, first_line=first), state):
            if isinstance(item, Piece):
                out += [(line, item["reason"]) for line in range(item["first"], item["last"] + 1)]
            else:
                out.append((item.line, "line"))
    return out


def test_split_scans_agree_with_whole_file_scans_on_markup_soup(tmp_path):
    from hypothesis import given, settings, strategies as st

    path = tmp_path / "Posts.xml"

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join), min_size=1, max_size=30),
           st.integers(min_value=1, max_value=40))
    def check(lines, split):
        path.write_bytes("\n".join(lines).encode() + b"\n")
        assert classify_file(path, split) == classify_file(path, None)

    check()


def test_the_one_pass_line_count_equals_the_readers_count(tmp_path):
    from hypothesis import given, settings, strategies as st

    from sources.readers import count_line_starts
    from sources.xml_lines import _count_lines_and_find_markers

    path = tmp_path / "Posts.xml"

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from([b"\n", b"a", b"<!--", b"-->", b"\n\n"]), max_size=60).map(b"".join),
           st.data())
    def check(data, draw):
        path.write_bytes(data)
        if not data:
            return
        start = draw.draw(st.integers(0, len(data) - 1))
        end = draw.draw(st.integers(start + 1, len(data)))
        assert _count_lines_and_find_markers(str(path), start, end)[0] == count_line_starts(str(path), start, end)

    check()
