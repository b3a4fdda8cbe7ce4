"""--source news on the real AG News, XSum and BBC samples (Beam) and hand-made CNN/DailyMail, CC-News and bad
inputs."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import re

import pytest

from sources.base import InputError, RunContext, expand_inputs
from sources.news import AGNEWS, BBC, CCNEWS, CNNDM, XSUM, NewsConfig, clean_agnews, read, xsum_sections
from tests.helpers import KEEP_TEXTS, run_read_transform
from sources.readers import split_outcomes

run_beam = run_read_transform


def run_local(paths, config=None, context=None):
    transform = read(expand_inputs([str(path) for path in paths]), config or NewsConfig(),
                     context or RunContext("news", KEEP_TEXTS))
    return split_outcomes(transform.run_local())


def test_real_samples_every_row_accounted_for(shared_data):
    context = RunContext("news", KEEP_TEXTS)
    news = shared_data / "news"
    transform = read(expand_inputs([str(news / "ag_news_csv"), str(news / "xsum"), str(news / "bbc")]),
                     NewsConfig(), context)
    pairs, rejects = run_beam(transform)
    counts = collections.Counter(row["dataset"] for row in pairs + rejects)
    assert counts == {AGNEWS: 7600, XSUM: 321, BBC: 510}
    assert not rejects  # these samples are clean once their quirks are handled
    ag_lines = sorted(int(p["provenance"]["record"].rsplit(":", 1)[1]) for p in pairs if p["dataset"] == AGNEWS)
    assert ag_lines == list(range(1, 7601))
    assert len({p["id"] for p in pairs}) == len(pairs)
    # Documentation files in the folders are left out, and said so.
    skipped = context.extra["skipped_inputs"]
    assert {"ag_news_csv/readme.txt", "ag_news_csv/classes.txt", "bbc/README.TXT"} <= set(skipped)
    licenses = {p["dataset"]: p["provenance"]["license"] for p in pairs}
    assert licenses == {AGNEWS: "research / non-commercial", XSUM: "(c) BBC, research use",
                        BBC: "(c) BBC, research use"}


def test_agnews_artefacts_are_repaired(shared_data):
    path = shared_data / "news" / "ag_news_csv" / "test.csv"
    pairs, _ = run_local([path])
    by_line = {int(p["provenance"]["record"].rsplit(":", 1)[1]): p for p in pairs}
    # Line 2: "\" line breaks and " #36;" (a "$" whose "&" became a space).
    assert by_line[2]["document"].startswith("SPACE.com - TORONTO, Canada -- A second team of rocketeers")
    assert "the $10 million Ansari X Prize" in by_line[2]["document"]
    assert by_line[2]["provenance"]["category"] == "Sci/Tech"
    artefacts = re.compile(r" #\d+;| quot;| amp;|\\|&lt;|&gt;|&amp;|<a |</a>", re.IGNORECASE)
    assert not [p for p in pairs if artefacts.search(p["query"]) or artefacts.search(p["document"])]
    raw = list(csv.reader(path.open(encoding="utf-8")))
    assert sum(" #39;" in row[2] for row in raw) > 100  # the artefacts were there to repair
    assert clean_agnews("Johnson  amp; Johnson said  quot;no quot; and it #39;s \\$5 \\\\ more") == \
        'Johnson & Johnson said "no" and it\'s $5 more'
    assert clean_agnews("Staples Inc. &lt;A HREF=\"http://x\"&gt;SPLS.O&lt;/A&gt;, a retailer") == \
        "Staples Inc. SPLS.O, a retailer"
    assert clean_agnews("it is not; the end") == "it is not; the end"  # only the entities seen in the data


def test_xsum_and_bbc_fields(shared_data):
    news = shared_data / "news"
    pairs, rejects = run_local([news / "xsum" / "xsum-extracts-from-downloads_Filtered" / "29604402.data",
                                news / "bbc" / "business" / "001.txt"])
    assert not rejects
    xsum = next(p for p in pairs if p["dataset"] == XSUM)
    assert xsum["query"].startswith("The winner of the Man Booker Prize is announced later")
    assert xsum["document"].startswith("Mukherjee's The Lives Of Others")
    assert xsum["provenance"]["url"].endswith("entertainment-arts-29604402")
    assert xsum["provenance"]["bbc_id"] == "29604402"
    bbc = next(p for p in pairs if p["dataset"] == BBC)
    assert bbc["query"] == "Ad sales boost Time Warner profit"
    assert bbc["document"].startswith("Quarterly profits at US media giant TimeWarner")
    assert bbc["document"].count("\n\n") >= 3  # paragraphs kept apart
    assert bbc["provenance"]["category"] == "business"
    # The original archive's [SN] layout.
    sections = xsum_sections("[SN]URL[SN]\nhttp://x\n\n[SN]TITLE[SN]\nT\n\n[SN]FIRST-SENTENCE[SN]\nS.\n\n"
                             "[SN]RESTBODY[SN]\nBody.\n")
    assert sections == {"URL": "http://x", "TITLE": "T", "FIRST-SENTENCE": "S.", "RESTBODY": "Body."}


def test_cnn_dailymail_and_ccnews(tmp_path):
    folder = tmp_path / "cnn" / "stories"
    folder.mkdir(parents=True)
    (folder / "0001d1ab.story").write_text(
        "(CNN) -- First paragraph of the story.\n\nSecond paragraph.\n\n@highlight\n\nThe first highlight\n\n"
        "@highlight\n\nA second one!\n", encoding="utf-8")
    (folder / "0002.story").write_text("Only an article, no highlights.\n", encoding="utf-8")
    (folder / "0003.story").write_bytes(gzip.compress(b"Packed article.\n\n@highlight\n\nPacked highlight\n"))
    ccnews = tmp_path / "cc.jsonl"
    ccnews.write_text(json.dumps({"title": "Rates rise", "text": "The bank raised rates today.",
                                  "domain": "example.com", "url": "https://example.com/a"}) + "\n"
                      + "{not json\n" + json.dumps({"title": "No text"}) + "\n", encoding="utf-8")
    pairs, rejects = run_local([tmp_path / "cnn", ccnews])
    story = next(p for p in pairs if p["dataset"] == CNNDM and p["provenance"]["story_id"] == "0001d1ab")
    packed = next(p for p in pairs if p["dataset"] == CNNDM and p["provenance"]["story_id"] == "0003")
    assert (packed["query"], packed["document"]) == ("Packed highlight.", "Packed article.")
    assert story["query"] == "The first highlight. A second one!"
    assert story["document"] == "(CNN) -- First paragraph of the story.\n\nSecond paragraph."
    assert story["provenance"]["outlet"] == "cnn" and story["provenance"]["story_id"] == "0001d1ab"
    cc = next(p for p in pairs if p["dataset"] == CCNEWS)
    assert (cc["query"], cc["provenance"]["url"]) == ("Rates rise", "https://example.com/a")
    reasons = sorted((r["dataset"], r["reason"]) for r in rejects)
    assert reasons == [(CCNEWS, "malformed_line"), (CCNEWS, "missing_field"), (CNNDM, "missing_field")]


def test_bad_files_become_rejects(tmp_path):
    bbc = tmp_path / "bbc" / "sport"
    bbc.mkdir(parents=True)
    (bbc / "001.txt").write_bytes("Costa\xa3 wins\n\nHe won \xa31m.\n".encode("cp1252"))
    (bbc / "002.txt").write_bytes(b"Headline\n\nBody with a NUL \x00 byte.\n")
    (bbc / "003.txt").write_bytes(b"Headline only\n")
    (bbc / "004.txt").write_bytes(b"Big\n\n" + b"word " * 3000)
    xsum = tmp_path / "x.data"
    xsum.write_text("[XSUM]URL[XSUM]\nhttp://bbc/1\n\n[XSUM]INTRODUCTION[XSUM]\nSummary only.\n", encoding="utf-8")
    pairs, rejects = run_local([tmp_path / "bbc", xsum], NewsConfig(max_file_bytes=10_000))
    assert not pairs
    reasons = sorted((r["provenance"]["record"], r["reason"]) for r in rejects)
    assert reasons == [("bbc/sport/001.txt", "invalid_utf8"), ("bbc/sport/002.txt", "nul_byte"),
                       ("bbc/sport/003.txt", "missing_field"), ("bbc/sport/004.txt", "oversized_file"),
                       ("x.data", "missing_field")]
    # The original BBC archive's few cp1252 files can be read instead of rejected.
    pairs, rejects = run_local([bbc / "001.txt"], NewsConfig(fallback_encoding="cp1252"))
    assert pairs[0]["document"] == "He won \xa31m." and not rejects


def test_many_article_files_travel_in_packs(tmp_path, monkeypatch):
    import sources.readers

    monkeypatch.setattr(sources.readers, "_UNITS_PER_PACK", 7)  # what 2,000+ files of XSum/CNN would trigger
    folder = tmp_path / "bbc" / "tech"
    folder.mkdir(parents=True)
    for index in range(30):
        (folder / f"{index:03d}.txt").write_text(f"Headline {index}\n\nBody of article {index}.\n", encoding="utf-8")
    pairs, rejects = run_beam(read(expand_inputs([str(tmp_path / "bbc")]), NewsConfig(), RunContext("news",
                                                                                                    KEEP_TEXTS)))
    assert not rejects
    assert sorted(p["provenance"]["record"] for p in pairs) == [f"bbc/tech/{i:03d}.txt" for i in range(30)]


def test_unknown_format_stops_at_once(tmp_path):
    odd = tmp_path / "notes.xml"
    odd.write_text("<x/>", encoding="utf-8")
    with pytest.raises(InputError) as error:
        read(expand_inputs([str(odd)]), NewsConfig(), RunContext("news", KEEP_TEXTS))
    assert "unknown format" in str(error.value) and "\n" not in str(error.value)
    not_ag = tmp_path / "table.csv"
    not_ag.write_text("name,value\nx,1\n", encoding="utf-8")
    with pytest.raises(InputError, match="not an AG News CSV"):
        read(expand_inputs([str(not_ag)]), NewsConfig(), RunContext("news", KEEP_TEXTS))
    other_jsonl = tmp_path / "pairs.jsonl"
    other_jsonl.write_text(json.dumps({"query": "q", "document": "d"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="no record among the first has 'title' and 'text'"):
        read(expand_inputs([str(other_jsonl)]), NewsConfig(), RunContext("news", KEEP_TEXTS))
