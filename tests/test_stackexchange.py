"""StackExchange source: row parsing, HTML, tags, licences, answer choice, hostile and odd dumps."""

from __future__ import annotations

import gzip
import json
import resource
import time
from pathlib import Path

import py7zr
import pytest

from sources.stackexchange import (StackExchangeSourceConfig, choose_answer, license_for, parse_row, site_of)
from sources.text import html_to_text, parse_tags
from pipelines.core.records import release_extra
from tests.helpers import release_rejects, release_rows, run_build

FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")


def _posts_xml(rows: list[str], prolog: str = "") -> str:
    return ("\ufeff<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n" + prolog + "<posts>\r\n"
            + "".join(f"  {row}\r\n" for row in rows) + "</posts>\r\n")


def _question(post_id: int, title: str, body: str, **extra: str) -> str:
    attributes = {"Id": str(post_id), "PostTypeId": "1", "Score": "3", "CreationDate": "2020-01-01T00:00:00.000",
                  "Title": title, "Body": body, **extra}
    return "<row " + " ".join(f'{k}="{v}"' for k, v in attributes.items()) + " />"


def _answer(post_id: int, parent: int, body: str, score: int = 2) -> str:
    return (f'<row Id="{post_id}" PostTypeId="2" ParentId="{parent}" Score="{score}" '
            f'CreationDate="2020-01-02T00:00:00.000" Body="{body}" />')


# --- plain functions -------------------------------------------------------------------------------------

def test_html_to_text_keeps_paragraphs_code_and_lists():
    text = html_to_text("<p>Use <code>x &amp;&amp; y</code> here.</p><pre><code>if a:\n    b()\n</code></pre>"
                        "<ul><li>one</li><li>two</li></ul>")
    assert text == "Use x && y here.\n\nif a:\n    b()\n\n- one\n- two"


def test_both_tag_formats_parse():
    assert parse_tags("<python><apache-beam>") == ["python", "apache-beam"]
    assert parse_tags("|python|apache-beam|") == ["python", "apache-beam"]
    assert parse_tags(None) == []


def test_licence_from_row_or_dump_era():
    assert license_for("CC BY-SA 4.0", "2010-01-01") == "CC BY-SA 4.0"
    assert license_for(None, "2010-05-01T00:00:00") == "CC BY-SA 2.5"
    assert license_for(None, "2015-01-27T20:09:32.720") == "CC BY-SA 3.0"
    assert license_for(None, "2019-01-01") == "CC BY-SA 4.0"


def test_site_names_from_folders_and_archives():
    assert site_of("cardano.stackexchange.com/Posts.xml") == "cardano.stackexchange.com"
    assert site_of("cardano.stackexchange.com.7z/Posts.xml") == "cardano.stackexchange.com"
    assert site_of("stackoverflow.com-Posts.7z/Posts.xml") == "stackoverflow.com"


def test_parse_row_never_expands_entities():
    attributes, reason = parse_row('<row Id="1" Title="&lol9;" />', 10_000)
    assert attributes is None and reason == "undefined_entity"
    attributes, reason = parse_row('<row Id="1" Body="&xxe;" />', 10_000)
    assert attributes is None and reason == "undefined_entity"
    assert parse_row('<!DOCTYPE posts [', 10_000) == (None, "unexpected_line")
    assert parse_row('<?xml version="1.0" encoding="utf-8"?>', 10_000) == (None, None)
    assert parse_row('<row Id="1" Body="cut here', 10_000) == (None, "malformed_xml_row")
    assert parse_row('<row Id="1" Body="a\x00b" />', 10_000) == (None, "nul_byte")
    assert parse_row('<row Id="1" Body="' + "x" * 5000 + '" />', 1024) == (None, "row_too_large")
    attributes, reason = parse_row('<row Id="7" Title="a &amp; b" />', 10_000)
    assert reason is None and attributes == {"Id": "7", "Title": "a & b"}


def _post(post_id, score, body="text"):
    return {"id": str(post_id), "score": score, "body": body}


def test_answer_choice_is_accepted_then_best_scored_then_smallest_id():
    question = {"accepted_answer_id": "5"}
    answers = [_post(4, 10), _post(5, 0), _post(6, 10)]
    assert choose_answer(question, answers, 1, None)[0]["id"] == "5"
    assert choose_answer({"accepted_answer_id": None}, answers, 1, None) == (answers[0], "top_scored")
    assert choose_answer({"accepted_answer_id": "9"}, answers, 1, None)[1] == "top_scored"
    assert choose_answer({"accepted_answer_id": None}, [_post(1, 0)], 1, None) == (None, "no_answer_above_min_score")
    assert choose_answer({"accepted_answer_id": None}, [], 1, None) == (None, "no_answer")
    # an accepted answer below a configured bar is not taken
    assert choose_answer(question, [_post(5, 0)], 1, 1) == (None, "no_answer_above_min_score")


def test_unknown_config_key_is_rejected():
    with pytest.raises(Exception):
        StackExchangeSourceConfig.model_validate({"titel_body": True})


# --- end to end on real dumps ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cardano_release(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cardano") / "release"
    status = run_build("--source", "stackexchange", "--input",
                       str(shared_data / "stackexchange" / "cardano.stackexchange.com"), "--output", str(out), *FAST)
    assert status == 0
    return out


def test_cardano_release_accounts_for_every_question(cardano_release):
    manifest = json.loads((cardano_release / "manifest.json").read_text())
    kept = release_rows(cardano_release, "stackexchange_title_body")
    rejected = release_rejects(cardano_release, "stackexchange_title_body")
    read_rejects = [r for r in rejected if r["stage"] == "read"]
    # 1,042 questions in the dump: each is a kept pair or a reject with a reason.
    assert len(kept) + len(rejected) == 1042
    assert manifest["funnel"]["per_dataset"]["stackexchange_title_body"][0]["in"] == 1042
    assert not read_rejects  # every question has a title and body in this dump
    qa_kept = release_rows(cardano_release, "stackexchange_question_answer")
    qa_rejected = release_rejects(cardano_release, "stackexchange_question_answer")
    assert len(qa_kept) + len(qa_rejected) == 1042
    assert {r["reason"] for r in qa_rejected} <= {"no_answer", "no_answer_above_min_score", "query_equals_document",
                                                  "exact_duplicate", "document_too_short", "query_too_short"}
    # accepted answers are preferred: 459 accepted answers exist in the dump
    accepted = [row for row in qa_kept if release_extra(row)["answer_choice"] == "accepted"]
    assert 400 <= len(accepted) <= 459


def test_cardano_release_text_and_rows_as_the_dump_has_them(cardano_release, shared_data):
    title_body = {row["provenance"]["post_ids"][0]: row for row in release_rows(cardano_release,
                                                                               "stackexchange_title_body")}
    # a title with angle brackets, not parsed as HTML
    assert title_body["3734"]["query"] == "cardano-cli: Network.Socket.connect: <socket: 11>: does not exist"
    answers = {row["provenance"]["post_ids"][1]: row for row in release_rows(cardano_release,
                                                                            "stackexchange_question_answer")}
    # the indented code of answer 4742 survives normalize, exact dedup and MinHash
    assert answers["4742"]["document"].endswith("const API = new BlockFrostAPI({\n"
                                                "  projectId: 'YOURAPIKEYFORTESTNET',\n  isTestnet: true\n});")
    assert not any("enter image description here" in row["query"] + row["document"]
                   for dataset in ("stackexchange_title_body", "stackexchange_question_answer")
                   for row in release_rows(cardano_release, dataset))
    # every Posts.xml / PostLinks.xml row is accounted for, and the card explains rows vs candidates
    manifest = json.loads((cardano_release / "manifest.json").read_text())
    for item in manifest["inputs"]:
        dump = (shared_data / "stackexchange" / item["name"]).read_text(encoding="utf-8-sig")
        assert item["rows"] == sum(1 for line in dump.splitlines() if line.strip().startswith("<row"))
        assert sum(item["rows_by_outcome"].values()) == item["rows"]
    posts = next(item for item in manifest["inputs"] if item["name"].endswith("/Posts.xml"))
    assert posts["rows_by_outcome"]["question_used"] == 1042
    assert posts["rows_by_outcome"]["answer_used_as_document"] == len(answers)
    assert manifest["funnel"]["input_rows"]["rows"] == 2630 + 104
    card = (cardano_release / "README.md").read_text()
    assert "## Input rows" in card and "candidates, not rows" in card and "stackexchange_posts" not in card


def test_duplicate_links_to_missing_posts_are_rejects(cardano_release):
    kept = release_rows(cardano_release, "stackexchange_duplicates")
    rejected = release_rejects(cardano_release, "stackexchange_duplicates")
    assert len(kept) + len(rejected) == 10  # 10 duplicate links in PostLinks.xml
    missing = [r for r in rejected if r["reason"].startswith("duplicate_") and r["reason"].endswith("_missing")]
    assert len(missing) == 5
    assert all(r["detail"]["post_id"] for r in missing)


def test_release_rows_have_provenance_and_licence(cardano_release):
    row = release_rows(cardano_release, "stackexchange_question_answer")[0]
    provenance = row["provenance"]
    assert provenance["license"] == "CC BY-SA 4.0"
    assert provenance["url"].startswith("https://cardano.stackexchange.com/q/")
    assert release_extra(row)["answer_url"].startswith("https://cardano.stackexchange.com/a/")
    assert provenance["input"] == "cardano.stackexchange.com/Posts.xml"
    assert provenance["record"].startswith("cardano.stackexchange.com/posts/")
    card = (cardano_release / "README.md").read_text()
    assert card.startswith("---\n") and "license: cc-by-sa-4.0" in card and "CC BY-SA" in card


def test_coffee_2015_dump_without_links_or_licence_attribute(shared_data, tmp_path):
    out = tmp_path / "coffee"
    assert run_build("--source", "stackexchange", "--input",
                     str(shared_data / "stackexchange" / "coffee.stackexchange.com"), "--output", str(out), *FAST) == 0
    kept = release_rows(out, "stackexchange_title_body")
    rejected = release_rejects(out, "stackexchange_title_body")
    assert len(kept) + len(rejected) == 225
    assert {row["provenance"]["license"] for row in kept} == {"CC BY-SA 3.0"}
    assert not (out / "data" / "stackexchange_duplicates").exists()


def test_seven_zip_archive_gives_the_same_pairs_as_the_folder(shared_data, tmp_path, cardano_release):
    site = shared_data / "stackexchange" / "cardano.stackexchange.com"
    archive = tmp_path / "cardano.stackexchange.com.7z"
    with py7zr.SevenZipFile(archive, "w") as seven_zip:
        seven_zip.write(site / "Posts.xml", "Posts.xml")
        seven_zip.write(site / "PostLinks.xml", "PostLinks.xml")
    out = tmp_path / "from7z"
    assert run_build("--source", "stackexchange", "--input", str(archive), "--output", str(out), *FAST) == 0
    for dataset in ("stackexchange_title_body", "stackexchange_question_answer", "stackexchange_duplicates"):
        from_archive = {(r["query"], r["document"]) for r in release_rows(out, dataset)}
        from_folder = {(r["query"], r["document"]) for r in release_rows(cardano_release, dataset)}
        assert from_archive == from_folder and from_archive


def test_hostile_dump_entity_bomb_and_external_entity(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT-42")
    prolog = ("<!DOCTYPE posts [\r\n<!ENTITY lol \"lol\">\r\n"
              + "".join(f"<!ENTITY lol{i} \"{('&lol' + str(i - 1) + ';') * 10 if i > 1 else '&lol;' * 10}\">\r\n"
                        for i in range(1, 10))
              + f"<!ENTITY xxe SYSTEM \"file://{secret}\">\r\n]>\r\n")
    rows = [_question(1, "&lol9;", "&lt;p&gt;bomb&lt;/p&gt;"),
            _question(2, "External entity", "&xxe;"),
            _question(3, "A perfectly normal question", "&lt;p&gt;With a perfectly normal body text.&lt;/p&gt;")]
    site = tmp_path / "hostile.stackexchange.com"
    site.mkdir()
    (site / "Posts.xml").write_text(_posts_xml(rows, prolog), encoding="utf-8")
    out = tmp_path / "out"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(out), *FAST) == 0
    assert time.monotonic() - started < 60
    # ru_maxrss is in KiB: a billion-laughs expansion would need gigabytes.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 300_000
    kept = release_rows(out, "stackexchange_title_body")
    assert [row["query"] for row in kept] == ["A perfectly normal question"]
    post_rejects = release_rejects(out, "stackexchange_posts")
    assert sorted(r["reason"] for r in post_rejects if r["reason"] == "undefined_entity") == ["undefined_entity"] * 2
    for path in out.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            assert b"TOP-SECRET-CONTENT-42" not in data
            assert b"lollollol" not in data


def test_truncated_dump_invalid_bytes_and_pipe_tags(tmp_path):
    site = tmp_path / "odd.stackexchange.com"
    site.mkdir()
    good = _question(1, "Pipe tags question", "&lt;p&gt;Body of the pipe tags question.&lt;/p&gt;",
                     Tags="|beam|dataflow|")
    bad_utf8 = _question(2, "Broken bytes", "&lt;p&gt;caf\udcff&lt;/p&gt;")
    content = _posts_xml([good]).encode("utf-8")
    content = content.replace(b"</posts>\r\n", b"")
    content += bad_utf8.encode("utf-8", "surrogateescape") + b"\r\n"
    content += _question(3, "Truncated", "never closed").encode()[:40]  # the dump ends mid-row
    (site / "Posts.xml").write_bytes(content)
    out = tmp_path / "out"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(out), *FAST) == 0
    kept = release_rows(out, "stackexchange_title_body")
    assert [release_extra(row)["tags"] for row in kept] == [["beam", "dataflow"]]
    reasons = sorted(r["reason"] for r in release_rejects(out, "stackexchange_posts"))
    assert reasons == ["invalid_utf8", "malformed_xml_row"]


def test_duplicate_link_to_missing_post(tmp_path):
    site = tmp_path / "links.stackexchange.com"
    site.mkdir()
    (site / "Posts.xml").write_text(_posts_xml([
        _question(1, "First question title", "&lt;p&gt;First body with words.&lt;/p&gt;"),
        _question(2, "Second question title", "&lt;p&gt;Second body with words.&lt;/p&gt;"),
        _answer(3, 1, "&lt;p&gt;An answer with some words.&lt;/p&gt;")]), encoding="utf-8")
    (site / "PostLinks.xml").write_text(
        "\ufeff<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<postlinks>\n"
        '  <row Id="10" PostId="2" RelatedPostId="1" LinkTypeId="3" />\n'
        '  <row Id="11" PostId="2" RelatedPostId="99" LinkTypeId="3" />\n'
        '  <row Id="12" PostId="1" RelatedPostId="2" LinkTypeId="1" />\n'
        "</postlinks>\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(out), *FAST) == 0
    kept = release_rows(out, "stackexchange_duplicates")
    assert [(r["query"], r["document"]) for r in kept] == [("Second question title", "First question title")]
    rejects = release_rejects(out, "stackexchange_duplicates")
    assert [(r["reason"], r["detail"]["post_id"]) for r in rejects] == [("duplicate_target_missing", "99")]
    qa = release_rows(out, "stackexchange_question_answer")
    assert [r["document"] for r in qa] == ["An answer with some words."]


def test_posts_split_into_byte_ranges_give_the_same_release(shared_data, tmp_path, cardano_release):
    out = tmp_path / "split"
    # ~3 MB Posts.xml in 100 kB ranges: 30+ ranges read in parallel, rows never lost or doubled at the seams.
    assert run_build("--source", "stackexchange", "--input",
                     str(shared_data / "stackexchange" / "cardano.stackexchange.com"), "--output", str(out),
                     "--set", "source.split_bytes=100000", *FAST) == 0
    for dataset in ("stackexchange_title_body", "stackexchange_question_answer", "stackexchange_duplicates"):
        shards = sorted((out / "data" / dataset).glob("shard-*.jsonl.gz"))
        reference = sorted((cardano_release / "data" / dataset).glob("shard-*.jsonl.gz"))
        assert [p.read_bytes() for p in shards] == [p.read_bytes() for p in reference]


def test_without_input_the_site_dump_is_downloaded_and_cached(shared_data, tmp_path, cardano_release):
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    site = shared_data / "stackexchange" / "cardano.stackexchange.com"
    with py7zr.SevenZipFile(served / "cardano.stackexchange.com.7z", "w") as seven_zip:
        seven_zip.write(site / "Posts.xml", "Posts.xml")
        seven_zip.write(site / "PostLinks.xml", "PostLinks.xml")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        template = f"http://127.0.0.1:{server.server_address[1]}/{{site}}.7z"
        cache = tmp_path / "cache"
        out = tmp_path / "downloaded"
        assert run_build("--source", "stackexchange", "--output", str(out), "--set", "source.sites=[cardano.stackexchange.com]", "--set", f"source.url_template={template}",
                         "--set", f"download.cache_dir={cache}", *FAST) == 0
    finally:
        server.shutdown()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [item["name"] for item in manifest["inputs"]] == ["cardano.stackexchange.com.7z"]
    for dataset in ("stackexchange_title_body", "stackexchange_question_answer"):
        assert ({r["id"] for r in release_rows(out, dataset)}
                == {r["id"] for r in release_rows(cardano_release, dataset)})
    # The server is gone: a second build reuses the cached dump.
    again = tmp_path / "again"
    assert run_build("--source", "stackexchange", "--output", str(again), "--set", "source.sites=[cardano.stackexchange.com]", "--set", f"source.url_template={template}",
                     "--set", f"download.cache_dir={cache}", *FAST) == 0


def test_without_input_and_network_one_line_says_pass_input(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pipelines.build", "--source", "stackexchange", "--output", str(tmp_path / "o"),
         "--set", "source.sites=[cardano.stackexchange.com]",
         "--set", "source.url_template=http://127.0.0.1:9/{site}.7z", "--set", f"download.cache_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pass --input" in lines[0]
