"""StackExchange dump layouts and row accounting, on the real sample dumps: the site is known for certain,
per-table archives and several sites read, every row of every file read is accounted for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import py7zr
import pytest

from pipelines.core.records import release_extra
from sources.base import InputError, InputFile
from sources.stackexchange_layout import (archive_tables, missing_links_line, missing_links_warnings, plan_dump,
                                          site_in_name)
from tests.helpers import release_rejects, release_rows, run_build

FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")
REPO = Path(__file__).resolve().parent.parent
KINDS = ("stackexchange_title_body", "stackexchange_question_answer", "stackexchange_duplicates")


def _row_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip().startswith("<row"))


def _build_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.build", "--source", "stackexchange", *args, *FAST],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def test_site_names_from_archives_and_folders():
    assert site_in_name("cardano.stackexchange.com.7z") == "cardano.stackexchange.com"
    assert site_in_name("stackoverflow.com-Posts.7z") == "stackoverflow.com"
    assert site_in_name("stackoverflow.com-PostLinks.7z") == "stackoverflow.com"
    assert site_in_name("ru.meta.stackoverflow.com") == "ru.meta.stackoverflow.com"
    for site in ("superuser.com", "serverfault.com", "askubuntu.com", "mathoverflow.net", "meta.superuser.com",
                 "math.meta.stackexchange.com", "stackapps.com"):
        assert site_in_name(site) == site
    for not_a_site in ("data", "dump.7z", "stackexchange.com.evil.org", "Posts.xml", "example.com"):
        assert site_in_name(not_a_site) is None
    assert archive_tables("stackoverflow.com-Posts.7z") == ("Posts.xml",)
    assert archive_tables("stackoverflow.com-PostLinks.7z") == ("PostLinks.xml",)
    assert archive_tables("stackoverflow.com-Users.7z") == ()
    assert archive_tables("cardano.stackexchange.com.7z") == ("Posts.xml", "PostLinks.xml")


def test_only_tables_read_are_planned():
    files = [InputFile(f"/d/cardano.stackexchange.com/{name}", f"cardano.stackexchange.com/{name}", 1)
             for name in ("Badges.xml", "PostLinks.xml", "Posts.xml", "Users.xml", "Votes.xml")]
    assert [d.file.name for d in plan_dump(files, None, True)] == ["cardano.stackexchange.com/PostLinks.xml",
                                                                   "cardano.stackexchange.com/Posts.xml"]
    assert [d.file.name for d in plan_dump(files, None, False)] == ["cardano.stackexchange.com/Posts.xml"]
    # a glob of files names each by its base name: two sites' Posts.xml would share one name
    same_name = [InputFile(f"/d/{site}/Posts.xml", "Posts.xml", 1)
                 for site in ("cardano.stackexchange.com", "coffee.stackexchange.com")]
    with pytest.raises(InputError, match="both named 'Posts.xml'"):
        plan_dump(same_name, None, True)
    assert plan_dump(same_name[:1], None, True)[0].site == "cardano.stackexchange.com"


def test_a_site_archive_without_postlinks_is_warned_about_before_the_run(shared_data, tmp_path):
    posts = shared_data / "stackexchange" / "coffee.stackexchange.com" / "Posts.xml"
    archive = tmp_path / "coffee.stackexchange.com.7z"
    with py7zr.SevenZipFile(archive, "w") as seven_zip:
        seven_zip.write(posts, "Posts.xml")
    planned = plan_dump([InputFile(str(archive), archive.name, archive.stat().st_size)], None, True)
    assert [(dump.site, dump.tables) for dump in planned] == [("coffee.stackexchange.com", ("Posts.xml", "PostLinks.xml"))]
    assert missing_links_warnings(planned) == [missing_links_line("coffee.stackexchange.com")]
    with py7zr.SevenZipFile(archive, "a") as seven_zip:
        seven_zip.writestr("<postlinks>\n</postlinks>\n", "PostLinks.xml")
    assert missing_links_warnings(planned) == []


def test_dump_in_a_folder_named_data_is_refused_or_named_by_source_site(shared_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(shared_data / "stackexchange" / "coffee.stackexchange.com" / "Posts.xml", data / "Posts.xml")
    refused = _build_cli("--input", str(data), "--output", str(tmp_path / "refused"))
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "source.site" in lines[0] and "data" in lines[0]
    assert not (tmp_path / "refused" / "manifest.json").exists()

    out = tmp_path / "named"
    assert run_build("--source", "stackexchange", "--input", str(data), "--output", str(out),
                     "--set", "source.site=coffee.stackexchange.com", *FAST) == 0
    urls = {row["provenance"]["url"].rsplit("/", 1)[0] for row in release_rows(out, "stackexchange_title_body")}
    assert urls == {"https://coffee.stackexchange.com/q"}

    # a site that contradicts the folder's name is refused too, in one line
    contradicted = _build_cli("--input", str(shared_data / "stackexchange" / "coffee.stackexchange.com"),
                              "--output", str(tmp_path / "contradicted"), "--set", "source.site=superuser.com")
    assert contradicted.returncode == 2
    assert len([line for line in contradicted.stderr.splitlines() if line.strip()]) == 1


def test_per_table_archives_of_the_largest_site_layout_build_with_duplicates(shared_data, tmp_path):
    site = shared_data / "stackexchange" / "cardano.stackexchange.com"
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    # stackoverflow.com's layout: one archive per table, here made from the cardano sample
    for table in ("Posts", "PostLinks"):
        with py7zr.SevenZipFile(dumps / f"cardano.stackexchange.com-{table}.7z", "w") as archive:
            archive.write(site / f"{table}.xml", f"{table}.xml")
    with py7zr.SevenZipFile(dumps / "cardano.stackexchange.com-Users.7z", "w") as archive:
        archive.writestr("<users />\n", "Users.xml")  # a table no pair kind reads: neither read nor hashed
    out = tmp_path / "tables"
    assert run_build("--source", "stackexchange", "--input", str(dumps), "--output", str(out), *FAST) == 0
    reference = tmp_path / "folder"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(reference), *FAST) == 0
    for dataset in KINDS:
        from_tables = {(r["query"], r["document"]) for r in release_rows(out, dataset)}
        assert from_tables and from_tables == {(r["query"], r["document"]) for r in release_rows(reference, dataset)}
    manifest = json.loads((out / "manifest.json").read_text())
    inputs = {item["name"]: item for item in manifest["inputs"]}
    assert sorted(inputs) == ["dumps/cardano.stackexchange.com-PostLinks.7z", "dumps/cardano.stackexchange.com-Posts.7z"]
    posts = inputs["dumps/cardano.stackexchange.com-Posts.7z"]
    links = inputs["dumps/cardano.stackexchange.com-PostLinks.7z"]
    assert posts["rows"] == _row_lines(site / "Posts.xml") == posts["members"]["Posts.xml"]["rows"]
    assert links["rows"] == _row_lines(site / "PostLinks.xml")
    assert links["rows_by_outcome"] == {"duplicate_link_used": 10, "link_of_another_type": 94}
    assert manifest["funnel"]["input_rows"]["warnings"] == []


def test_several_sites_by_glob_or_repeated_input(shared_data, tmp_path):
    root = shared_data / "stackexchange"
    by_glob = tmp_path / "glob"
    assert run_build("--source", "stackexchange", "--input", str(root / "*.stackexchange.com"),
                     "--output", str(by_glob), *FAST) == 0
    repeated = tmp_path / "repeated"
    assert run_build("--source", "stackexchange", "--input", str(root / "coffee.stackexchange.com"),
                     "--input", str(root / "cardano.stackexchange.com"), "--output", str(repeated), *FAST) == 0
    for dataset in ("stackexchange_title_body", "stackexchange_question_answer"):
        rows = release_rows(by_glob, dataset)
        assert {release_extra(row)["site"] for row in rows} == {"cardano.stackexchange.com",
                                                               "coffee.stackexchange.com"}
        assert {row["id"] for row in rows} == {row["id"] for row in release_rows(repeated, dataset)}
    manifest = json.loads((by_glob / "manifest.json").read_text())
    assert [item["name"] for item in manifest["inputs"]] == [
        "cardano.stackexchange.com/PostLinks.xml", "cardano.stackexchange.com/Posts.xml",
        "coffee.stackexchange.com/Posts.xml"]
    for item in manifest["inputs"]:
        assert item["rows"] == _row_lines(root / item["name"]) == sum(item["rows_by_outcome"].values())
    # coffee's dump has no PostLinks.xml: said once, in the funnel (and on stderr)
    assert manifest["funnel"]["input_rows"]["warnings"] == [
        "coffee.stackexchange.com: no PostLinks.xml rows read, so no stackexchange_duplicates pairs (pass the "
        "whole dump folder or SITE.7z to get them)"]


def test_missing_postlinks_warns_and_only_files_read_are_hashed(shared_data, tmp_path, capsys):
    site = tmp_path / "coffee.stackexchange.com"
    site.mkdir()
    shutil.copy(shared_data / "stackexchange" / "coffee.stackexchange.com" / "Posts.xml", site / "Posts.xml")
    for table in ("Users.xml", "Votes.xml", "Comments.xml"):
        (site / table).write_text("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<x>\n</x>\n")
    out = tmp_path / "out"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(out), *FAST) == 0
    captured = capsys.readouterr()
    assert "warning: coffee.stackexchange.com: no PostLinks.xml among the inputs" in captured.err
    assert "warning: coffee.stackexchange.com: no PostLinks.xml rows read" in captured.out  # the funnel table
    manifest = json.loads((out / "manifest.json").read_text())
    assert [item["name"] for item in manifest["inputs"]] == ["coffee.stackexchange.com/Posts.xml"]
    posts = manifest["inputs"][0]
    assert posts["rows"] == 592
    assert posts["rows_by_outcome"]["question_used"] == 225
    answers = sum(count for outcome, count in posts["rows_by_outcome"].items() if outcome.startswith("answer"))
    assert answers == 327
    card = (out / "README.md").read_text()
    assert "## Input rows" in card and "no PostLinks.xml rows read" in card
    assert "stackexchange_posts" not in card and "stackexchange_posts" not in (out / "report.html").read_text()
    assert "stackexchange_posts" not in manifest["funnel"]["per_dataset"]


def test_malformed_rows_are_accounted_for_and_kept_out_of_the_pair_funnel(tmp_path):
    site = tmp_path / "odd.stackexchange.com"
    site.mkdir()
    rows = ['<row Id="1" PostTypeId="1" Score="1" CreationDate="2020-01-01T00:00:00" Title="A question title" '
            'Body="&lt;p&gt;A body with enough words.&lt;/p&gt;" />',
            '<row Id="2" PostTypeId="2" ParentId="1" Score="3" Body="&lt;p&gt;An answer with words.&lt;/p&gt;" />',
            '<row Id="3" PostTypeId="2" ParentId="1" Score="1" Body="&lt;p&gt;Another answer here.&lt;/p&gt;" />',
            '<row Id="4" PostTypeId="2" ParentId="99" Score="5" Body="&lt;p&gt;An orphan answer.&lt;/p&gt;" />',
            '<row Id="5" PostTypeId="5" Body="&lt;p&gt;A tag wiki.&lt;/p&gt;" />',
            '<row Id="6" PostTypeId="1" Title="cut',
            '<row PostTypeId="1" Title="no id" Body="x" />']
    (site / "Posts.xml").write_text("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<posts>\n"
                                    + "".join(f"  {row}\n" for row in rows) + "</posts>\n", encoding="utf-8")
    (site / "PostLinks.xml").write_text("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<postlinks>\n"
                                        '  <row Id="1" PostId="1" RelatedPostId="4" LinkTypeId="1" />\n'
                                        "  <row broken\n</postlinks>\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(out), *FAST) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    inputs = {item["name"]: item for item in manifest["inputs"]}
    assert inputs["odd.stackexchange.com/Posts.xml"]["rows_by_outcome"] == {
        "answer_not_chosen": 1, "answer_used_as_document": 1, "answer_without_question": 1,
        "malformed:malformed_xml_row": 1, "malformed:missing_id": 1, "other_post_type": 1, "question_used": 1}
    assert inputs["odd.stackexchange.com/Posts.xml"]["rows"] == 7
    assert inputs["odd.stackexchange.com/PostLinks.xml"]["rows_by_outcome"] == {
        "link_of_another_type": 1, "malformed:malformed_xml_row": 1}
    # unreadable rows are still listed with their text, but are not pair candidates of any dataset
    assert len(release_rejects(out, "stackexchange_posts")) == 3
    assert set(manifest["funnel"]["per_dataset"]) == {"stackexchange_question_answer", "stackexchange_title_body"}
    assert manifest["funnel"]["total"][0]["in"] == 2
