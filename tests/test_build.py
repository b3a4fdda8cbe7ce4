"""The build command and the release contract: layout, record schema, indexes, determinism, errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.config import ConfigError, NormalizeConfig, load_config, parse_override
from pipelines.core.records import REQUIRED_RELEASE_KEYS, REQUIRED_REJECT_KEYS
from pipelines.release.manifest import UnaccountedRows, compute_funnel
from sources.stackexchange import StackExchangeSourceConfig
from tests.helpers import load_like_contrastors, read_jsonl_gz, release_rows, run_build

REPO = Path(__file__).resolve().parent.parent
FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")


@pytest.fixture(scope="module")
def two_releases(shared_data, tmp_path_factory):
    site = str(shared_data / "stackexchange" / "cardano.stackexchange.com")
    first = tmp_path_factory.mktemp("first") / "release"
    second = tmp_path_factory.mktemp("second") / "release"
    assert run_build("--source", "stackexchange", "--input", site, "--output", str(first), *FAST) == 0
    assert run_build("--source", "stackexchange", "--input", site, "--output", str(second), *FAST) == 0
    return first, second


def _release_files(release: Path) -> dict[str, bytes]:
    return {p.relative_to(release).as_posix(): p.read_bytes() for p in release.rglob("*")
            if p.is_file() and not p.relative_to(release).as_posix().startswith("runs/")}


def test_two_runs_are_byte_identical(two_releases):
    first, second = two_releases
    files_first, files_second = _release_files(first), _release_files(second)
    assert sorted(files_first) == sorted(files_second)
    for key in files_first:
        assert files_first[key] == files_second[key], key


def test_release_layout_and_record_schema(two_releases):
    release = two_releases[0]
    manifest = json.loads((release / "manifest.json").read_text())
    assert (release / "README.md").is_file()
    for dataset, summary in manifest["datasets"].items():
        folder = release / "data" / dataset
        counts = json.loads((folder / "counts.json").read_text())
        lines_in_shards = 0
        for shard in summary["shards"]:
            raw = gzip.decompress((release / shard["key"]).read_bytes())
            raw.decode("ascii")  # ASCII-only lines: character offsets equal byte offsets
            lines = raw.splitlines()
            lines_in_shards += len(lines)
            assert counts["count_per_file"][shard["key"]] == len(lines) == shard["rows"]
            for line in lines:
                row = json.loads(line)
                assert all(key in row for key in REQUIRED_RELEASE_KEYS)
                assert list(row) == sorted(row)
                assert row["dataset"] == dataset and row["source"] == "stackexchange"
                assert row["metadata"]["objective"]["paired"] == [["query", "document"]]
                assert "triplet" not in row["metadata"]["objective"]  # no negatives in this build
        assert counts["total_count"] == lines_in_shards == summary["rows"]
    for dataset, summary in manifest["rejects"].items():
        for shard in summary["shards"]:
            for row in read_jsonl_gz(release / shard["key"]):
                assert all(key in row for key in REQUIRED_REJECT_KEYS)


def test_contrastors_style_loader_gets_every_pair_back(two_releases):
    release = two_releases[0]
    for dataset in ("stackexchange_title_body", "stackexchange_question_answer", "stackexchange_duplicates"):
        by_offsets = load_like_contrastors(release, dataset)
        assert sorted(r["id"] for r in by_offsets) == sorted(r["id"] for r in release_rows(release, dataset))
        assert by_offsets


def test_manifest_records_inputs_config_and_checksums(two_releases, shared_data):
    import hashlib

    release = two_releases[0]
    manifest = json.loads((release / "manifest.json").read_text())
    posts = shared_data / "stackexchange" / "cardano.stackexchange.com" / "Posts.xml"
    by_name = {item["name"]: item for item in manifest["inputs"]}
    assert by_name["cardano.stackexchange.com/Posts.xml"]["sha256"] == hashlib.sha256(posts.read_bytes()).hexdigest()
    # decontaminate is off unless evaluation texts are given
    assert manifest["skipped_stages"] == ["consistency", "decontaminate", "minhash", "negatives"]
    # configs/stackexchange.yaml leaves whitespace to the reader (code blocks keep their indentation)
    assert manifest["config"]["normalize"] == {**NormalizeConfig().model_dump(mode="json"),
                                               "collapse_whitespace": False}
    for summary in manifest["datasets"].values():
        for shard in summary["shards"]:
            assert hashlib.sha256((release / shard["key"]).read_bytes()).hexdigest() == shard["sha256"]
    stages = [row["stage"] for row in manifest["funnel"]["total"]]
    assert stages == ["read", "normalize", "exact_dedup"]
    text = (release / "manifest.json").read_text()
    assert str(release) not in text  # nothing machine-specific about the output


def test_funnel_refuses_unaccounted_rows():
    funnel = compute_funnel({"d": 10}, [("d", "read", "bad_row", 2), ("d", "normalize", "too_short", 3)],
                            ["normalize"], {"d": 7})
    assert funnel["per_dataset"]["d"] == [
        {"stage": "read", "in": 12, "out": 10, "dropped": {"bad_row": 2}},
        {"stage": "normalize", "in": 10, "out": 7, "dropped": {"too_short": 3}}]
    with pytest.raises(UnaccountedRows):
        compute_funnel({"d": 10}, [("d", "normalize", "too_short", 3)], ["normalize"], {"d": 6})


def test_set_overrides_are_typed_and_validated():
    config, source = load_config("stackexchange", StackExchangeSourceConfig, None,
                                 ["minhash.threshold=0.9", "source.min_answer_score=3", "negatives.sampling=random"])
    assert config.minhash.threshold == 0.9 and source.min_answer_score == 3
    assert config.source["min_answer_score"] == 3
    with pytest.raises(ConfigError, match="minhash.threshold"):
        load_config("stackexchange", StackExchangeSourceConfig, None, ["minhash.threshold=high"])
    with pytest.raises(ConfigError, match="unknown config key 'source.sitez'"):
        load_config("stackexchange", StackExchangeSourceConfig, None, ["source.sitez=[a]"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("minhash.threshold")


@pytest.mark.parametrize("args, message", [
    (["--source", "nope"], "invalid choice: 'nope'"),
    (["--source", "stackexchange", "--input", "/does/not/exist"], "input not found: /does/not/exist"),
    (["--source", "stackexchange", "--input", "/tmp", "--set", "consistency.top_k=two"], "consistency.top_k"),
    (["--source", "stackexchange", "--input", "/tmp", "--set", "release.shard_rowz=5"],
     "unknown config key 'release.shard_rowz'"),
    (["--source", "stackexchange", "--input", "/tmp", "--skip", "read"], "invalid choice: 'read'"),
    (["--source", "stackexchange", "--config", "/no/such.yaml"], "config file not found"),
])
def test_bad_command_lines_exit_2_with_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "pipelines.build", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_existing_release_is_not_overwritten_without_flag(two_releases, shared_data):
    release = two_releases[0]
    before = (release / "manifest.json").read_bytes()
    site = str(shared_data / "stackexchange" / "cardano.stackexchange.com")
    assert run_build("--source", "stackexchange", "--input", site, "--output", str(release), *FAST) == 2
    assert (release / "manifest.json").read_bytes() == before
    assert run_build("--source", "stackexchange", "--input", site, "--output", str(release), "--overwrite",
                     *FAST) == 0
    assert (release / "manifest.json").read_bytes() == before


def test_help_explains_every_flag():
    result = subprocess.run([sys.executable, "-m", "pipelines.build", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--source", "--config", "--input", "--output", "--set", "--skip", "--overwrite", "examples:",
                 "DirectRunner"):
        assert flag in result.stdout


def test_streamed_offsets_file_equals_the_offsets_document(tmp_path):
    from pipelines.release.writer import offsets_document, write_jsonl_gz, write_offsets_gz

    shards = []
    for index, count in enumerate((3, 0, 12)):
        rows = [{"id": f"{index:02d}{n:030d}", "text": "x" * n} for n in range(count)]
        _, lengths = write_jsonl_gz(rows, str(tmp_path / f"s{index}.gz"), 6, release_rows=False)
        shards.append({"key": f"data/d/shard-{index:05d}.jsonl.gz", "line_lengths": lengths.tobytes()})
    write_offsets_gz(shards, str(tmp_path / "offsets.json.gz"), 6)
    streamed = json.loads(gzip.decompress((tmp_path / "offsets.json.gz").read_bytes()))
    assert streamed == offsets_document(shards)
    assert streamed["data/d/shard-00002.jsonl.gz"]["11"][1] == sum(
        len(json.dumps({"id": f"02{n:030d}", "text": "x" * n}, separators=(",", ":"))) + 1 for n in range(12))
