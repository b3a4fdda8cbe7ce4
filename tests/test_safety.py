"""Hostile configurations, inputs and archives: each gives one line (exit 2), a reject, or a correct release;
nothing from outside the input tree reaches a release."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.config import MAX_CONFIG_BYTES, ConfigError, load_config
from sources.generic import SOURCES

JSONL = SOURCES["jsonl"]
from tests.helpers import run_build

REPO_ROOT = Path(__file__).resolve().parent.parent
FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")

ALIAS_BOMB = "\n".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]) + "\n"


def run_cli(*args: str, memory_bytes: int = 2 << 30, timeout: float = 120) -> subprocess.CompletedProcess:
    """The build command in a child with an address-space cap: a bomb fails the cap instead of the machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pipelines.build", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


# -- configuration ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (ALIAS_BOMB, "expands to more than"),
    ("x: [" + ", ".join(["&a 1"] + ["*a"] * 200) + "]\n", "more than 100 YAML aliases"),
    ("# comment\n" * (MAX_CONFIG_BYTES // 10 + 1), "larger than"),
    ("[" * 50_000, "nests too deeply"),
])
def test_hostile_config_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config("jsonl", JSONL.config_model, path)


def test_config_from_a_device_or_a_folder_is_refused(tmp_path):
    for path in ("/dev/zero", str(tmp_path)):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config("jsonl", JSONL.config_model, path)


def test_an_alias_bomb_in_a_set_override_is_refused():
    value = "[&a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"&{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(6)) + "]"
    with pytest.raises(ConfigError, match="--set release.pretty_name expands"):
        load_config("jsonl", JSONL.config_model, None, [f"release.pretty_name={value}"])


@pytest.mark.parametrize("config", ["bomb", "/dev/zero", "big"])
def test_hostile_configs_stop_the_cli_with_one_line(tmp_path, config):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q", "document": "d"}\n')
    if config == "bomb":
        config = tmp_path / "bomb.yaml"
        config.write_text(ALIAS_BOMB)
    elif config == "big":
        config = tmp_path / "big.yaml"
        with open(config, "w") as handle:
            handle.write(("#" * 1023 + "\n") * (200 * 1024))  # 200 MB of comments
    result = run_cli("--source", "jsonl", "--config", str(config), "--input", str(pairs), "--output",
                     str(tmp_path / "release"))
    assert result.returncode == 2
    assert "config file" in one_error_line(result.stderr)
    assert not (tmp_path / "release").exists()


# -- inputs stay inside their tree ----------------------------------------------------------------------------------

SITE_ROW = ('<row Id="1" PostTypeId="1" Score="3" Title="How do stake pools work?" '
            'Body="&lt;p&gt;A body long enough to be a document.&lt;/p&gt;" />')


def site_posts(rows: list[str]) -> bytes:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "".join(f"  {r}\n" for r in rows)
            + "</posts>\n").encode("utf-8")


def test_a_symlink_out_of_a_dump_folder_is_refused_and_nothing_leaks(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("AWS_SECRET_ACCESS_KEY=do-not-publish-me\n")
    site = tmp_path / "dumps" / "leak.stackexchange.com"
    site.mkdir(parents=True)
    (site / "Posts.xml").symlink_to(secret)
    release = tmp_path / "release"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(release), *FAST) == 2
    assert "symbolic link to outside" in one_error_line(capsys.readouterr().err)
    assert not release.exists()
    # Through a glob too, and through a linked folder on the way.
    assert run_build("--source", "stackexchange", "--input", str(tmp_path / "dumps" / "*" / "Posts.xml"),
                     "--output", str(release), *FAST) == 2
    assert "symbolic link to outside" in one_error_line(capsys.readouterr().err)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "Posts.xml").write_bytes(site_posts([SITE_ROW]))
    (site / "Posts.xml").unlink()
    (tmp_path / "dumps" / "linked.stackexchange.com").symlink_to(elsewhere)
    assert run_build("--source", "stackexchange", "--input", str(tmp_path / "dumps" / "*" / "Posts.xml"),
                     "--output", str(release), *FAST) == 2  # Beam's glob does not enter linked folders
    assert "input not found" in one_error_line(capsys.readouterr().err)
    assert run_build("--source", "stackexchange", "--input", str(tmp_path / "dumps"),
                     "--output", str(release), *FAST) == 2
    assert "symbolic link to outside" in one_error_line(capsys.readouterr().err)
    assert not release.exists()


def test_a_symlink_inside_the_dump_folder_is_read(tmp_path, capsys):
    site = tmp_path / "inside.stackexchange.com"
    site.mkdir()
    (site / ".posts-2024.xml").write_bytes(site_posts([SITE_ROW]))  # dot files are not inputs themselves
    (site / "Posts.xml").symlink_to(site / ".posts-2024.xml")
    release = tmp_path / "release"
    assert run_build("--source", "stackexchange", "--input", str(site), "--output", str(release), *FAST) == 0


def test_a_device_or_a_pipe_as_input_is_refused(tmp_path, capsys):
    folder = tmp_path / "pairs"
    folder.mkdir()
    os.mkfifo(folder / "pairs.jsonl")
    for given in (str(folder), "/dev/zero"):
        assert run_build("--source", "jsonl", "--input", given, "--output", str(tmp_path / "release"), *FAST) == 2
        assert "not a regular file" in one_error_line(capsys.readouterr().err)


def test_archive_members_are_read_or_refused_by_name(tmp_path):
    import py7zr

    from sources.stackexchange import choose_archive_member

    payload = tmp_path / "Posts.xml"
    payload.write_bytes(site_posts([SITE_ROW]))
    archive = tmp_path / "two.stackexchange.com.7z"
    with py7zr.SevenZipFile(archive, "w") as seven_zip:
        seven_zip.write(payload, "Posts.xml")
        seven_zip.write(payload, "old/Posts.xml")
    with py7zr.SevenZipFile(archive) as seven_zip:
        chosen, refused = choose_archive_member(seven_zip.list(), "Posts.xml", 1 << 20)
        assert chosen == "Posts.xml"
        assert [(name, reason) for name, reason, _ in refused] == [("old/Posts.xml", "duplicate_archive_member")]
        chosen, refused = choose_archive_member(seven_zip.list(), "Posts.xml", 10)
        assert chosen is None and {reason for _, reason, _ in refused} == {"archive_member_too_large"}

    release = tmp_path / "release"
    assert run_build("--source", "stackexchange", "--input", str(archive), "--output", str(release), *FAST) == 0
    from tests.helpers import release_rejects, release_rows

    assert len(release_rows(release, "stackexchange_title_body")) == 1
    assert [(r["reason"], r["detail"]["member"]) for r in release_rejects(release, "stackexchange_posts")] == [
        ("duplicate_archive_member", "old/Posts.xml")]


def test_archive_unpacking_is_bounded_even_when_the_header_lies(tmp_path):
    from sources.stackexchange import ExtractionBudgetExceeded, _FileIO

    sink = _FileIO(str(tmp_path / "member.xml"), max_bytes=100)
    sink.write(b"x" * 100)
    with pytest.raises(ExtractionBudgetExceeded):
        sink.write(b"x")
    assert (tmp_path / "member.xml").stat().st_size == 100

    # End to end: an archive whose member unpacks past download.max_extracted_bytes becomes one named reject.
    import py7zr

    from tests.helpers import release_rejects

    payload = tmp_path / "Posts.xml"
    payload.write_bytes(site_posts([SITE_ROW] * 2000))
    archive = tmp_path / "big.stackexchange.com.7z"
    with py7zr.SevenZipFile(archive, "w") as seven_zip:
        seven_zip.write(payload, "Posts.xml")
    release = tmp_path / "release"
    assert run_build("--source", "stackexchange", "--input", str(archive), "--output", str(release), *FAST,
                     "--set", "download.max_extracted_bytes=4096") == 0
    assert [r["reason"] for r in release_rejects(release, "stackexchange_posts")] == ["archive_member_too_large"]


# -- hostile releases: verify and explain are bounded ----------------------------------------------------------------

def run_tool(module: str, *args: str, memory_bytes: int = 1536 << 20, timeout: float = 120):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)


@pytest.fixture
def small_release(tmp_path):
    import json

    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as handle:
        for index in range(50):
            handle.write(json.dumps({"query": f"question {index}", "document": f"answer number {index}"}) + "\n")
    release = tmp_path / "release"
    assert run_build("--source", "jsonl", "--input", str(pairs), "--output", str(release), *FAST) == 0
    return release


def test_a_gzip_bomb_shard_fails_verify_and_explain_fast_with_one_line(small_release):
    import gzip
    import hashlib
    import json

    manifest_path = small_release / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    shard = manifest["datasets"]["custom_pairs"]["shards"][0]
    first_id = json.loads(gzip.decompress((small_release / shard["key"]).read_bytes()).splitlines()[0])["id"]
    bomb = gzip.compress(b" " * (1 << 30), 9)  # 1 GiB of spaces, no newline: ~1 MB compressed
    (small_release / shard["key"]).write_bytes(bomb)
    # The manifest is made consistent with the bomb: only reading the shard can tell.
    shard.update(bytes=len(bomb), sha256=hashlib.sha256(bomb).hexdigest())
    manifest_path.write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n")

    result = run_tool("pipelines.verify", str(small_release))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert any(shard["key"] in line and "longer than" in line for line in failed), result.stdout

    result = run_tool("pipelines.explain", str(small_release), first_id)
    assert result.returncode == 2
    assert "longer than" in one_error_line(result.stderr)


def test_a_huge_manifest_is_refused_by_its_size(small_release):
    manifest_path = small_release / "manifest.json"
    with open(manifest_path, "r+b") as handle:  # 1 GiB (sparse: costs no disk)
        handle.truncate(1 << 30)
    result = run_tool("pipelines.verify", str(small_release))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "more than any manifest" in result.stdout
    result = run_tool("pipelines.explain", str(small_release), "0" * 32)
    assert result.returncode == 2 and "more than any manifest" in one_error_line(result.stderr)
