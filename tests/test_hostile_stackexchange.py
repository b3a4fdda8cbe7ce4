"""Hostile StackExchange inputs: fuzzed rows, path-traversal archive members, truncated archives, huge lines."""

from __future__ import annotations

import os

import py7zr
from hypothesis import HealthCheck, given, settings, strategies as st

from sources.stackexchange import parse_row, post_from_row
from sources.text import html_to_text, parse_tags
from tests.helpers import release_rejects, release_rows, run_build

FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")
ROW = ('<row Id="1" PostTypeId="1" Score="1" CreationDate="2020-01-01T00:00:00" Title="A question title here" '
       'Body="&lt;p&gt;A body with enough words to keep.&lt;/p&gt;" />')


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_parse_row_never_raises_on_any_text(line):
    attributes, reason = parse_row(line, 10_000)
    assert (attributes is None) or isinstance(attributes, dict)
    if attributes is not None:
        post = post_from_row(attributes, "fuzz.stackexchange.com", "fuzz/Posts.xml")
        assert isinstance(post["title"], str) and isinstance(post["body"], str)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/&;\"'=abc pliREDTYCATA[]!-#x0123456789")), max_size=300))
def test_parse_row_on_markup_soup(fragment):
    attributes, reason = parse_row(f"<row Id=\"1\" Body=\"{fragment}\" />", 10_000)
    assert attributes is not None or reason in {"malformed_xml_row", "undefined_entity", "forbidden_xml",
                                                "nul_byte", "unexpected_line"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=500))
def test_html_to_text_total(markup):
    assert isinstance(html_to_text(markup), str)
    assert isinstance(parse_tags(markup), list)


def test_html_to_text_deeply_nested_markup_is_bounded():
    markup = "<div>" * 5000 + "deep text" + "</div>" * 5000
    assert "deep text" in html_to_text(markup) or html_to_text(markup) == ""


def _site_posts(rows: list[str]) -> bytes:
    return ("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<posts>\n" + "".join(f"  {r}\n" for r in rows)
            + "</posts>\n").encode("utf-8")


def test_path_traversal_member_name_writes_nothing_outside(tmp_path):
    payload = tmp_path / "payload.xml"
    payload.write_bytes(_site_posts([ROW]))
    archive = tmp_path / "evil.stackexchange.com.7z"
    with py7zr.SevenZipFile(archive, "w") as seven_zip:
        seven_zip.write(payload, "../../escaped/Posts.xml")
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = tmp_path / "out"
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        assert run_build("--source", "stackexchange", "--input", str(archive), "--output", str(out), *FAST) == 0
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert not list(workdir.rglob("*"))
    # The member is refused by name, before any byte of it is extracted.
    assert not release_rows(out, "stackexchange_title_body")
    assert [(r["reason"], r["detail"]["member"]) for r in release_rejects(out)] == [
        ("unsafe_archive_member", "../../escaped/Posts.xml")]


def test_truncated_archive_is_a_reject_not_a_crash(tmp_path):
    payload = tmp_path / "Posts.xml"
    payload.write_bytes(_site_posts([ROW] * 50))
    archive = tmp_path / "cut.stackexchange.com.7z"
    with py7zr.SevenZipFile(archive, "w") as seven_zip:
        seven_zip.write(payload, "Posts.xml")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert run_build("--source", "stackexchange", "--input", str(archive), "--output", str(out), *FAST) == 0
    reasons = {r["reason"] for r in release_rejects(out)}
    assert "unreadable_archive" in reasons


def test_fifty_megabyte_line_is_rejected_with_a_reason(tmp_path):
    site = tmp_path / "huge.stackexchange.com"
    site.mkdir()
    huge = '<row Id="2" PostTypeId="1" Title="Huge" Body="' + "A" * (50 * 1024 * 1024) + '" />'
    (site / "Posts.xml").write_bytes(_site_posts([ROW, huge]))
    out = tmp_path / "out"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(out), *FAST) == 0
    rejects = release_rejects(out, "stackexchange_posts")
    assert [r["reason"] for r in rejects] == ["row_too_large"]
    assert len(rejects[0]["raw"]) <= 2000  # the reject does not carry the 50 MB
    assert len(release_rows(out, "stackexchange_title_body")) == 1


def test_nul_bytes_in_rows(tmp_path):
    site = tmp_path / "nul.stackexchange.com"
    site.mkdir()
    (site / "Posts.xml").write_bytes(_site_posts([ROW, ROW.replace('Id="1"', 'Id="3"').replace("A body", "A\x00body")]))
    out = tmp_path / "out"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(out), *FAST) == 0
    assert [r["reason"] for r in release_rejects(out, "stackexchange_posts")] == ["nul_byte"]
