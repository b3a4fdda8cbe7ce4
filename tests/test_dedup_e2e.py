"""Issue 4's acceptance, end to end through the command line: planted near-duplicates in a JSON-lines input."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import release_rejects, release_rows, run_build
from tests.test_minhash import planted_corpus

NO_EMBEDDING = ("--skip", "consistency", "--skip", "negatives")


def _files(release: Path) -> dict[str, bytes]:
    return {p.relative_to(release).as_posix(): p.read_bytes() for p in release.rglob("*")
            if p.is_file() and not p.relative_to(release).as_posix().startswith("runs/")}


def test_jsonl_with_planted_near_duplicates_keeps_one_per_cluster(shared_data, tmp_path):
    pairs, clusters, unrelated = planted_corpus(shared_data)
    source = tmp_path / "pairs.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for pair in pairs:
            handle.write(json.dumps({"id": pair["id"], "query": pair["query"], "document": pair["document"]}) + "\n")
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        assert run_build("--source", "jsonl", "--input", str(source), "--output", str(out),
                         "--set", "source.dataset=planted_articles", *NO_EMBEDDING) == 0
    assert _files(first) == _files(second)  # byte-identical releases

    kept = release_rows(first, "planted_articles")
    rejects = [r for r in release_rejects(first, "planted_articles") if r["stage"] == "minhash"]
    record_of = {row["id"]: row["provenance"]["record"] for row in kept + rejects}
    kept_records = {row["provenance"]["record"] for row in kept}
    assert unrelated <= kept_records  # every unrelated pair kept
    for members in clusters:
        records = {member["id"] for member in members}
        survivors = records & kept_records
        assert len(survivors) == 1  # exactly one pair of each planted cluster
        for reject in rejects:
            if reject["provenance"]["record"] in records:
                assert reject["reason"] == "near_duplicate"
                assert record_of[reject["detail"]["survivor_id"]] in survivors  # the rejects name the survivor
    assert len(rejects) == sum(len(members) - 1 for members in clusters)
    manifest = json.loads((first / "manifest.json").read_text())
    report = manifest["stage_reports"]["minhash"]
    assert report["clusters"] == len(clusters) and report["parameters"]["num_perm"] == 128
