"""pipelines.verify against small releases built here by plain code, in the fixed release layout."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from pipelines.core.records import dumps_line, make_reject, new_pair, to_release_row
from pipelines.release.location import index_key
from pipelines.release.store import LocalStore, ReleaseStore
from pipelines.release.stores import open_store
from pipelines.verify import ReleaseVerifier, main, verify_release
from tests.helpers import KEEP_TEXTS

pytest_plugins = ("tests.s3_server",)  # the S3 fixtures, shared by all modules

REPO_ROOT = Path(__file__).resolve().parent.parent


# -- a sample release -----------------------------------------------------------------------------------------

def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def _entry(key: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"key": key, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}


def sample_rows(dataset: str, count: int, *, seed: int = 0, filler: int = 0) -> list[dict[str, Any]]:
    """Release rows; every other one has negatives. ``filler`` adds that many random hex characters to each
    document (random, so gzip cannot shrink a big shard away)."""
    rng = random.Random(f"{dataset}-{seed}")
    rows = []
    for index in range(count):
        document = f"Answer number {index} of {dataset}. " + rng.randbytes(filler // 2).hex()
        pair = new_pair(dataset=dataset, source="sample", query=f"Question {index} about {dataset}?",
                        document=document,
                        provenance={"record": f"sample/{dataset}/{index}", "input": "memory://sample",
                                    "license": "CC BY-SA 4.0"})
        if index % 2:
            pair["negatives"] = [f"unrelated text {index}-{n} with caf\u00e9" for n in range(2)]
            pair["scores"] = {"positive": 0.5 + index / 1000, "rank": 0, "negatives": [0.25, 0.125]}
        rows.append(to_release_row(pair))
    return sorted(rows, key=lambda row: row["id"])


def build_sample_release(folder: Path, *, datasets: dict[str, list[int]] | None = None, filler: int = 0,
                         edit_row: Callable[[str, int, dict], dict] | None = None,
                         edit_offsets: Callable[[dict], dict] | None = None, location: str = "",
                         negatives_per_row: dict[str, int] | None = None) -> list[tuple[str, Path]]:
    """Write a release's objects under ``folder``; returns (key, file) in commit order, manifest.json last.

    ``datasets`` maps a dataset to its rows per shard. ``edit_row(dataset, line, row)`` and
    ``edit_offsets(offsets)`` plant faults that the manifest then vouches for (consistent hashes). The index
    files are keyed for ``location`` (where the release is to be read from).
    """
    datasets = datasets or {"alpha_pairs": [3, 4], "beta_pairs": [2]}
    objects: dict[str, bytes] = {}
    manifest_datasets, manifest_rejects = {}, {}
    for dataset, shard_rows in datasets.items():
        rows = sample_rows(dataset, sum(shard_rows), filler=filler)
        shards, offsets = [], {}
        start = 0
        for index, count in enumerate(shard_rows):
            key = f"data/{dataset}/shard-{index:05d}.jsonl.gz"
            lines, spans, position = [], {}, 0
            for line_number, row in enumerate(rows[start:start + count]):
                if edit_row:
                    row = edit_row(dataset, line_number, json.loads(json.dumps(row)))
                line = (dumps_line(row) + "\n").encode("ascii")
                lines.append(line)
                spans[str(line_number)] = [position, position + len(line)]
                position += len(line)
            start += count
            objects[key] = _gzip(b"".join(lines))
            shards.append(_entry(key, objects[key], rows=count))
            offsets[index_key(location, key)] = spans
        if edit_offsets:
            offsets = edit_offsets(offsets)
        counts_key, offsets_key = f"data/{dataset}/counts.json", f"data/{dataset}/offsets.json.gz"
        objects[counts_key] = json.dumps({"count_per_file": {index_key(location, s["key"]): s["rows"]
                                                             for s in shards},
                                          "total_count": sum(shard_rows)}, sort_keys=True, indent=1).encode()
        objects[offsets_key] = _gzip(json.dumps(offsets, sort_keys=True, separators=(",", ":")).encode())
        manifest_datasets[dataset] = {"rows": sum(shard_rows), "shards": shards,
                                      "counts": _entry(counts_key, objects[counts_key]),
                                      "offsets": _entry(offsets_key, objects[offsets_key])}
        if negatives_per_row and dataset in negatives_per_row:
            manifest_datasets[dataset]["negatives_per_row"] = negatives_per_row[dataset]
        reject_key = f"rejects/{dataset}/rejects-00000.jsonl.gz"
        reject = make_reject(rows[0], stage="minhash", reason="near_duplicate", detail={"of": rows[-1]["id"]},
                             policy=KEEP_TEXTS)
        objects[reject_key] = _gzip((dumps_line(reject) + "\n").encode("ascii"))
        manifest_rejects[dataset] = {"rows": 1, "shards": [_entry(reject_key, objects[reject_key], rows=1)]}
    objects["README.md"] = "---\nlicense: cc-by-sa-4.0\n---\n# Sample release\n".encode()
    objects["report.html"] = b"<!doctype html><title>report</title>"
    manifest = {"format": "pair-curation/release-v1", "project": {"name": "pair-curation", "version": "0"},
                "source": "sample", "skipped_stages": [], "config": {}, "config_sha256": "0" * 64, "inputs": [],
                "model": None, "funnel": {}, "stage_reports": {}, "datasets": manifest_datasets, "location": location,
                "rejects": manifest_rejects,
                "files": [_entry(key, objects[key]) for key in ("README.md", "report.html")]}
    objects["manifest.json"] = (json.dumps(manifest, sort_keys=True, ensure_ascii=True, indent=1) + "\n").encode()

    def commit_rank(key: str) -> int:  # shards, then indexes, rejects, card and report, manifest last
        if key.startswith("data/") and "/shard-" in key:
            return 0
        if key.startswith("data/"):
            return 1
        if key.startswith("rejects/"):
            return 2
        return 4 if key == "manifest.json" else 3

    ordered = []
    for key in sorted(objects, key=lambda k: (commit_rank(k), k)):
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(objects[key])
        ordered.append((key, path))
    return ordered


def publish(store: ReleaseStore, files: list[tuple[str, Path]]) -> None:
    """The commit protocol: everything else first, then manifest.json created only if absent."""
    for key, path in files:
        store.put_file(key, path, if_none_match=key == "manifest.json")


@pytest.fixture
def local_release(tmp_path) -> Path:
    release = tmp_path / "release"
    publish(LocalStore(release), build_sample_release(tmp_path / "staging"))
    return release


# -- tests ----------------------------------------------------------------------------------------------------

def test_a_sound_release_verifies(local_release):
    report = ReleaseVerifier(open_store(str(local_release))).run()
    assert report.failures == {}
    assert report.rows_checked == 9 + 2  # pairs + reject lines
    assert report.objects_checked == 3 + 2 + 4 + 2  # shards, reject shards, indexes, README and report


def test_a_shard_overwritten_with_other_bytes_is_named(local_release):
    shard = local_release / "data/alpha_pairs/shard-00001.jsonl.gz"
    shard.write_bytes(_gzip(b'{"id":"x"}\n'))
    failures = verify_release(str(local_release))
    assert len(failures) == 1
    assert failures[0].startswith("data/alpha_pairs/shard-00001.jsonl.gz: size")


def test_same_size_corruption_is_caught_by_the_hash(local_release):
    shard = local_release / "data/beta_pairs/shard-00000.jsonl.gz"
    data_before = shard.read_bytes()
    data = bytearray(data_before)
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    failures = verify_release(str(local_release))
    assert failures == [f"data/beta_pairs/shard-00000.jsonl.gz: sha256 {hashlib.sha256(data).hexdigest()} "
                        f"does not match the manifest's {hashlib.sha256(bytes(data_before)).hexdigest()}"]


def test_missing_objects_are_named(local_release):
    (local_release / "data/alpha_pairs/counts.json").unlink()
    (local_release / "rejects/beta_pairs/rejects-00000.jsonl.gz").unlink()
    assert verify_release(str(local_release)) == ["data/alpha_pairs/counts.json: missing",
                                                  "rejects/beta_pairs/rejects-00000.jsonl.gz: missing"]


def test_without_manifest_the_release_is_incomplete(local_release):
    (local_release / "manifest.json").unlink()
    failures = verify_release(str(local_release))
    assert failures == ["manifest.json: missing: the release is incomplete (or there is none here)"]


def test_an_object_the_manifest_does_not_list_is_named(local_release):
    extra = local_release / "data/alpha_pairs/shard-00007.jsonl.gz"
    extra.write_bytes((local_release / "data/alpha_pairs/shard-00000.jsonl.gz").read_bytes())
    assert verify_release(str(local_release)) == ["data/alpha_pairs/shard-00007.jsonl.gz: not listed in "
                                                  "manifest.json"]


@pytest.mark.parametrize("edit, reason", [
    (lambda row: {k: v for k, v in row.items() if k != "scores"}, "line 2: scores: Field required"),
    (lambda row: dict(row, negatives=["ok", 7]), "line 2: negatives.1: Input should be a valid string"),
    (lambda row: dict(row, dataset="other_pairs"), "line 2: dataset 'other_pairs' in the folder of 'beta_pairs'"),
    # One schema: a source-specific key belongs in provenance.extra.
    (lambda row: dict(row, provenance={**row["provenance"], "tags": ["a"]}),
     "line 2: provenance.tags: Extra inputs are not permitted"),
    (lambda row: dict(row, provenance={**row["provenance"], "extra": "[1]"}),
     "line 2: provenance: Value error, provenance.extra must hold a JSON object"),
    (lambda row: dict(row, metadata={"objective": {"self": [], "paired": [["query", "document"]]}},
                      negatives=["a hard negative"]),
     "line 2: Value error, a row with negatives must list the triplet"),
])
def test_a_record_breaking_the_schema_is_named_with_its_line(tmp_path, edit, reason):
    def edit_row(dataset, line, row):
        return edit(row) if (dataset, line) == ("beta_pairs", 1) else row

    release = tmp_path / "release"
    publish(LocalStore(release), build_sample_release(tmp_path / "staging", edit_row=edit_row))
    failures = verify_release(str(release))
    assert len(failures) == 1
    assert failures[0].startswith(f"data/beta_pairs/shard-00000.jsonl.gz: {reason}")


def test_wrong_offsets_are_named(tmp_path):
    def shift_one(offsets):
        if "data/alpha_pairs/shard-00001.jsonl.gz" in offsets:
            offsets["data/alpha_pairs/shard-00001.jsonl.gz"]["2"][1] += 1
        return offsets

    release = tmp_path / "release"
    publish(LocalStore(release), build_sample_release(tmp_path / "staging", edit_offsets=shift_one))
    failures = verify_release(str(release))
    assert len(failures) == 1
    assert failures[0].startswith("data/alpha_pairs/offsets.json.gz: data/alpha_pairs/shard-00001.jsonl.gz: "
                                  "line 2 offsets")


def test_a_triplet_row_with_another_negatives_count_is_named(tmp_path):
    release = tmp_path / "release"
    # beta_pairs: line 1 has 2 negatives, line 0 none; the manifest says every row has 2.
    publish(LocalStore(release), build_sample_release(tmp_path / "staging", negatives_per_row={"beta_pairs": 2}))
    failures = verify_release(str(release))
    assert len(failures) == 1
    assert failures[0].startswith("data/beta_pairs/shard-00000.jsonl.gz: line 1: 0 negatives, the manifest says")


def test_index_files_keyed_for_another_location_are_named(tmp_path):
    release = tmp_path / "release"
    publish(LocalStore(release), build_sample_release(tmp_path / "staging"))
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["location"] = "s3://bucket/a/b"  # a local copy of a release published there ...
    (release / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")
    # ... whose index files were not rewritten for it
    assert sorted(line.split(":")[0] for line in verify_release(str(release))) == [
        "data/alpha_pairs/counts.json", "data/alpha_pairs/offsets.json.gz", "data/beta_pairs/counts.json",
        "data/beta_pairs/offsets.json.gz"]


def test_counts_that_disagree_with_the_manifest_are_named(local_release):
    counts = local_release / "data/beta_pairs/counts.json"
    counts.write_text(counts.read_text().replace('"total_count": 2', '"total_count": 3'))
    failures = verify_release(str(local_release))
    assert [line.split(":")[0] for line in failures] == ["data/beta_pairs/counts.json"]


def test_a_spot_check_rehashes_only_the_sample(local_release):
    # Same-size damage to every shard: a spot check of N shards finds exactly N of them, the rest pass the
    # presence-and-size check.
    shards = sorted(local_release.glob("*/*/*-0000?.jsonl.gz"))
    assert len(shards) == 5
    for shard in shards:
        data = bytearray(shard.read_bytes())
        data[-8] ^= 0xFF  # the gzip trailer's CRC: same size, different bytes
        shard.write_bytes(bytes(data))
    report = ReleaseVerifier(open_store(str(local_release)), sample=2, seed=3).run()
    assert report.objects_hashed == 2 + 4 + 2  # sampled shards + the always-checked indexes and files
    assert len(report.failures) == 2
    assert all("sha256" in reason for reason in report.failures.values())
    # A missing shard is found even when it is not in the sample.
    (local_release / "data/beta_pairs/shard-00000.jsonl.gz").unlink()
    report = ReleaseVerifier(open_store(str(local_release)), sample=0).run()
    assert report.failures == {"data/beta_pairs/shard-00000.jsonl.gz": "missing"}


def test_the_command_line_exit_status_and_output(local_release, capsys):
    assert main([str(local_release)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {local_release}: 11 objects, 11 rows checked")
    (local_release / "data/alpha_pairs/shard-00000.jsonl.gz").write_bytes(b"not gzip at all")
    assert main([str(local_release), "--sample", "1", "--seed", "0"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {local_release}/data/alpha_pairs/shard-00000.jsonl.gz: size 15 bytes" in out
    assert main(["ftp://example.org/release"]) == 2
    assert "unsupported release destination" in capsys.readouterr().err


def test_python_dash_m_runs_it(local_release):
    done = subprocess.run([sys.executable, "-m", "pipelines.verify", str(local_release)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK ")


def test_datasets_reads_a_published_release(local_release):
    datasets = pytest.importorskip("datasets")
    files = sorted(str(path) for path in (local_release / "data/alpha_pairs").glob("shard-*.jsonl.gz"))
    loaded = datasets.load_dataset("json", data_files=files, split="train")
    assert loaded.num_rows == 7
    assert sorted(loaded["id"]) == sorted(row["id"] for row in sample_rows("alpha_pairs", 7))
    assert loaded.filter(lambda row: bool(row["negatives"]))[0]["negatives"][0].startswith("unrelated text")


def test_verify_reads_a_release_in_s3(tmp_path, s3_env, s3_bucket):
    uri = f"s3://{s3_bucket}/releases/sample"
    publish(open_store(uri), build_sample_release(tmp_path / "staging", location=uri))
    assert verify_release(uri) == []
    # The same objects at another place: contrastors would not find the shards there, and verify says so.
    elsewhere = f"s3://{s3_bucket}/releases/copy"
    publish(open_store(elsewhere), build_sample_release(tmp_path / "staging-copy", location=uri))
    failures = verify_release(elsewhere)
    assert len(failures) == 1 and failures[0].startswith(f"manifest.json: indexed for {uri}, but published at "
                                                         f"{elsewhere}")
    # Overwrite one shard with other bytes, through a plain client: verify names it.
    client = s3_env.client()
    shard = "data/alpha_pairs/shard-00000.jsonl.gz"
    client.put_object(Bucket=s3_bucket, Key=f"releases/sample/{shard}", Body=b"other bytes",
                             ContentType="application/jsonl")
    failures = verify_release(uri)
    assert len(failures) == 1 and failures[0].startswith(f"{shard}: size 11 bytes")
    client.delete_object(Bucket=s3_bucket, Key="releases/sample/data/beta_pairs/offsets.json.gz")
    assert verify_release(uri, sample=1)[-1] == "data/beta_pairs/offsets.json.gz: missing"
