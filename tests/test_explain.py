"""`python -m pipelines.explain RELEASE ID`: the lineage of one pair, on local and s3:// releases."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import explain as explain_lib
from pipelines.core.records import id_bucket, make_input_reject, make_reject, new_pair
from pipelines.release.store import LocalStore
from pipelines.release.stores import open_store
from pipelines.release.writer import shard_count, shard_key, sha256_path, write_jsonl_gz
from tests.helpers import KEEP_TEXTS, read_jsonl_gz, run_build
pytest_plugins = ("tests.s3_server",)  # the shared SeaweedFS fixtures

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES_RUN = ["read", "normalize", "exact_dedup", "minhash", "consistency", "negatives"]


# -- a release with every stage's decisions, written with the release writer's own functions -----------------

def _pair(dataset: str, index: int, **extra) -> dict:
    pair = new_pair(dataset=dataset, source="demo", query=f"question {index}", document=f"answer {index}",
                    provenance={"input": "demo.jsonl", "record": f"demo.jsonl:{index + 1}", "license": "CC BY 4.0",
                                "url": f"https://example.org/{index}"})
    pair.update(extra)
    return pair


def scenario():
    kept = []
    for index in range(40):
        pair = _pair("demo_pairs", index)
        pair["negatives"] = [f"negative {index}-a", f"negative {index}-b"]
        pair["scores"] = {"positive": 0.8 + index / 1000, "rank": index % 2, "negatives": [0.5, 0.25]}
        kept.append(pair)
    kept += [_pair("other_pairs", 100 + index) for index in range(3)]
    survivor, second, third = kept[0], kept[1], kept[2]
    exact_copy = make_reject(_pair("demo_pairs", 200), stage="exact_dedup", reason="exact_duplicate",
                             detail={"survivor_id": survivor["id"], "key": "k",
                                     "rule": "longest_document"}, policy=KEEP_TEXTS)
    near_copy = make_reject(_pair("demo_pairs", 201), stage="minhash", reason="near_duplicate",
                            detail={"cluster_id": "cluster-7", "survivor_id": survivor["id"],
                                    "similarity": 0.9123}, policy=KEEP_TEXTS)
    # A near duplicate whose survivor was itself dropped later (by consistency): the chain is followed.
    dropped_survivor_pair = _pair("demo_pairs", 202)
    dropped_survivor = make_reject(dropped_survivor_pair, stage="consistency", reason="not_in_top_k",
                                   detail={"rank": 5, "score": 0.3141, "outranked_by": [second["id"], third["id"]]},
                                   policy=KEEP_TEXTS)
    orphan = make_reject(_pair("demo_pairs", 203), stage="minhash", reason="near_duplicate",
                         detail={"cluster_id": "cluster-8", "survivor_id": dropped_survivor_pair["id"],
                                 "similarity": 0.88}, policy=KEEP_TEXTS)
    unreadable = make_input_reject(dataset="demo_pairs", source="demo", reason="malformed_json",
                                   provenance={"input": "demo.jsonl", "record": "demo.jsonl:999"},
                                   detail={"error": "Expecting value"}, raw='{"query": "broken',
                                   policy=KEEP_TEXTS)
    # The same input row given twice: one id, kept once and rejected once.
    same_row_again = make_reject(second, stage="exact_dedup", reason="exact_duplicate",
                                 detail={"survivor_id": second["id"]}, policy=KEEP_TEXTS)
    hostile = _pair("other_pairs", 300, query="title \x1b[2J\x1b[31mred\u202e evil", document="doc")
    kept.append(hostile)
    filler = [make_reject(_pair("other_pairs", 400 + index), stage="normalize", reason="too_short",
                          policy=KEEP_TEXTS)
              for index in range(8)]
    more_copies = [make_reject(_pair("demo_pairs", 204 + index), stage="exact_dedup", reason="exact_duplicate",
                               detail={"survivor_id": survivor["id"]}, policy=KEEP_TEXTS) for index in range(3)]
    rejects = [exact_copy, near_copy, dropped_survivor, orphan, unreadable, same_row_again] + more_copies + filler
    named = {"more_copies": more_copies, "survivor": survivor, "second": second, "third": third, "exact_copy": exact_copy,
             "near_copy": near_copy, "dropped_survivor": dropped_survivor, "orphan": orphan,
             "unreadable": unreadable, "hostile": hostile}
    return kept, rejects, named


def write_release(root: Path, kept, rejects, shard_rows=10, reject_shard_rows=4) -> dict:
    manifest = {"format": "pair-curation/release-v1", "source": "demo", "skipped_stages": [],
                "funnel": {"stages": STAGES_RUN},
                "inputs": [{"name": "demo.jsonl", "bytes": 1234, "sha256": "ab" * 32}],
                "datasets": {}, "rejects": {}}
    for kind, rows, per_shard in (("data", kept, shard_rows), ("rejects", rejects, reject_shard_rows)):
        for dataset in sorted({row["dataset"] for row in rows}):
            mine = [row for row in rows if row["dataset"] == dataset]
            count = shard_count(len(mine), per_shard)
            shards = []
            for index in range(count):
                key = shard_key(kind, dataset, index)
                path = root / key
                path.parent.mkdir(parents=True, exist_ok=True)
                members = sorted((row for row in mine if id_bucket(row["id"], count) == index),
                                 key=lambda row: row["id"])
                written, _ = write_jsonl_gz(members, str(path), 6, release_rows=kind == "data")
                shards.append({"key": key, "rows": written, "bytes": path.stat().st_size,
                               "sha256": sha256_path(str(path))})
            manifest["datasets" if kind == "data" else "rejects"][dataset] = {"rows": len(mine), "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain") / "release"
    kept, rejects, named = scenario()
    manifest = write_release(root, kept, rejects)
    assert len(manifest["datasets"]["demo_pairs"]["shards"]) == 4  # several shards: the lookup must pick one
    return root, named


def run(*args: str) -> int:
    try:
        return explain_lib.main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


def explain_json(release: str, record_id: str, capsys, *extra: str) -> dict:
    assert run(release, record_id, "--json", *extra) == 0
    return json.loads(capsys.readouterr().out)


# -- kept pairs ------------------------------------------------------------------------------------------------

def test_kept_pair_shows_location_scores_negatives_and_absorbed_duplicates(demo, capsys):
    root, named = demo
    survivor = named["survivor"]
    result = explain_json(str(root), survivor["id"], capsys)
    assert result["status"] == "kept" and result["dataset"] == "demo_pairs"
    # The home shard by the writer's rule, and the line really holds the pair.
    expected_key = shard_key("data", "demo_pairs", id_bucket(survivor["id"], 4))
    location = result["location"]
    assert location["key"] == expected_key
    assert read_jsonl_gz(root / expected_key)[location["line"]]["id"] == survivor["id"]
    start, end = location["offsets"]
    with gzip.open(root / expected_key, "rb") as stream:
        assert json.loads(stream.read()[start:end])["id"] == survivor["id"]
    assert result["provenance"]["record"] == "demo.jsonl:1" and result["provenance"]["license"] == "CC BY 4.0"
    assert result["input"] == {"name": "demo.jsonl", "bytes": 1234, "sha256": "ab" * 32}
    assert result["scores"] == {"positive": 0.8, "rank": 0, "negatives": [
        {"text": "negative 0-a", "score": 0.5}, {"text": "negative 0-b", "score": 0.25}]}
    assert {item["id"] for item in result["absorbed"]} == {
        named["exact_copy"]["id"], named["near_copy"]["id"], *(copy["id"] for copy in named["more_copies"])}
    for item in result["absorbed"]:  # each named line really holds that reject
        assert read_jsonl_gz(root / item["key"])[item["line"]]["id"] == item["id"]
    # Several matches in one shard: line numbers are counted across matches.
    assert len({item["key"] for item in result["absorbed"]}) < len(result["absorbed"])
    near = next(item for item in result["absorbed"] if item["stage"] == "minhash")
    assert near["detail"]["similarity"] == 0.9123 and near["key"].startswith("rejects/demo_pairs/")
    manifest = json.loads((root / "manifest.json").read_text())
    # Every rejects shard of both datasets was read for the absorbed list (and only for it).
    assert result["rejects_shards_scanned"] == sum(len(r["shards"]) for r in manifest["rejects"].values()) == 5
    decisions = {stage["stage"]: stage for stage in result["stages"]}
    # The demo release predates decontaminate (an off-by-default stage): neither run nor skipped there.
    assert decisions.pop("decontaminate")["decision"] == "not run"
    assert [stage["decision"] for stage in decisions.values()] == ["passed"] * 6
    assert decisions["consistency"]["rank"] == 0 and decisions["consistency"]["positive"] == 0.8
    assert decisions["exact_dedup"]["absorbed"] == 4 and decisions["minhash"]["absorbed"] == 1


def test_kept_pair_text_output(demo, capsys):
    root, named = demo
    assert run(str(root), named["survivor"]["id"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pair {named['survivor']['id']}: KEPT")
    for expected in ("positive   0.8000", "rank       0", "0.5000  negative 0-a", "license    CC BY 4.0",
                     "input file demo.jsonl: 1,234 bytes, sha256 " + "ab" * 32,
                     "absorbed duplicates: 5", "read all 5 rejects shard(s)", "similarity 0.9123",
                     named["near_copy"]["id"]):
        assert expected in out, expected


def test_same_row_twice_is_shown_as_another_copy(demo, capsys):
    root, named = demo
    result = explain_json(str(root), named["second"]["id"], capsys)
    assert result["status"] == "kept"
    assert [(copy["kind"], copy["stage"]) for copy in result["other_copies"]] == [("rejects", "exact_dedup")]


class CountingStore(LocalStore):
    """A local store that records which objects are read (to check how much a lookup opens)."""

    def __init__(self, root):
        super().__init__(root)
        self.reads: list[str] = []

    def get_bytes(self, key):
        self.reads.append(key)
        return super().get_bytes(key)

    def local_path(self, key):  # shards are streamed from a local file, not fetched whole
        self.reads.append(key)
        return super().local_path(key)


def test_lookup_opens_one_shard_per_dataset(demo):
    root, named = demo
    store = CountingStore(root)
    lineage = explain_lib.explain(explain_lib.Release(store), named["survivor"]["id"], scan_absorbed=False)
    assert lineage.status == "kept" and lineage.absorbed is None
    data_reads = [key for key in store.reads if key.startswith("data/")]
    assert store.reads[0] == "manifest.json" and len(data_reads) == 2  # one per dataset (demo, other)
    assert not [key for key in store.reads if key.startswith("rejects/")]


# -- rejected pairs --------------------------------------------------------------------------------------------

def test_consistency_reject_shows_rank_score_and_who_outranked_it(demo, capsys):
    root, named = demo
    result = explain_json(str(root), named["dropped_survivor"]["id"], capsys)
    assert (result["status"], result["stage"], result["reason"]) == ("rejected", "consistency", "not_in_top_k")
    assert result["detail"]["rank"] == 5 and result["detail"]["score"] == 0.3141
    assert [other["id"] for other in result["outranked_by"]] == [named["second"]["id"], named["third"]["id"]]
    assert all(other["status"] == "kept" and other["key"].startswith("data/demo_pairs/shard-")
               for other in result["outranked_by"])
    assert [(s["stage"], s["decision"]) for s in result["stages"]] == [
        ("read", "passed"), ("normalize", "passed"), ("exact_dedup", "passed"), ("minhash", "passed"),
        ("decontaminate", "not run"), ("consistency", "dropped"), ("negatives", "not reached")]


def test_duplicate_reject_names_its_survivor_and_follows_a_dropped_one(demo, capsys):
    root, named = demo
    result = explain_json(str(root), named["near_copy"]["id"], capsys)
    assert result["stage"] == "minhash" and result["detail"]["similarity"] == 0.9123
    assert result["survivor"]["id"] == named["survivor"]["id"] and result["survivor"]["status"] == "kept"
    orphan = explain_json(str(root), named["orphan"]["id"], capsys)
    survivor = orphan["survivor"]
    assert (survivor["status"], survivor["stage"]) == ("rejected", "consistency")
    assert run(str(root), named["orphan"]["id"]) == 0
    out = capsys.readouterr().out
    assert "REJECTED" in out and "survivor" in out and "rejected at consistency (not_in_top_k)" in out


def test_read_reject_shows_the_raw_input(demo, capsys):
    root, named = demo
    assert run(str(root), named["unreadable"]["id"]) == 0
    out = capsys.readouterr().out
    assert "stage      read" in out and "reason     malformed_json" in out
    assert 'raw input  {"query": "broken' in out and "record     demo.jsonl:999" in out
    assert "normalize    not reached" in out


def test_terminal_control_characters_are_not_printed_raw(demo, capsys):
    root, named = demo
    assert run(str(root), named["hostile"]["id"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "title \\u001b[2J\\u001b[31mred\\u202e evil" in out


# -- not found, unreadable -------------------------------------------------------------------------------------

def test_unknown_id_exits_1_with_one_line(demo, capsys):
    root, _ = demo
    assert run(str(root), "0" * 32) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and "not found" in captured.err
    # A malformed id is a usage error: 2, like every other bad command line.
    assert run(str(root), "not-an-id") == 2
    err = capsys.readouterr().err
    assert "not a pair id" in err and len(err.strip().splitlines()) == 1


def test_unreadable_release_exits_2_with_one_line(tmp_path, demo, capsys):
    assert run(str(tmp_path / "missing"), "0" * 32) == 2
    assert "not a complete release" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert run(str(broken), "0" * 32) == 2
    assert "not valid JSON" in capsys.readouterr().err
    # A listed shard that is not gzip: the lookup stops with one line naming it.
    root, named = demo
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    manifest = json.loads((root / "manifest.json").read_text())
    (corrupt / "manifest.json").write_text(json.dumps(manifest))
    for dataset in manifest["datasets"].values():
        for shard in dataset["shards"]:
            (corrupt / shard["key"]).parent.mkdir(parents=True, exist_ok=True)
            (corrupt / shard["key"]).write_bytes(b"not gzip at all")
    assert run(str(corrupt), named["survivor"]["id"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a readable gzip shard" in err
    assert run("ftp://host/release", "0" * 32) == 2
    assert "unsupported release destination" in capsys.readouterr().err


# -- s3:// -----------------------------------------------------------------------------------------------------

def test_s3_release_gives_the_same_lineage(demo, s3_bucket, capsys):
    root, named = demo
    store = open_store(f"s3://{s3_bucket}/releases/demo")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            store.put_bytes(path.relative_to(root).as_posix(), path.read_bytes())
    for record_id in (named["survivor"]["id"], named["orphan"]["id"]):
        local = explain_json(str(root), record_id, capsys)
        remote = explain_json(f"s3://{s3_bucket}/releases/demo", record_id, capsys)
        assert remote == local
    assert run(f"s3://{s3_bucket}/no-such-release", named["survivor"]["id"]) == 2
    assert "not a complete release" in capsys.readouterr().err


# -- a real build ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(stackexchange_sample, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("explain-build") / "release"
    # Small shards so that the lookup has to pick the right one.
    status = run_build("--source", "stackexchange", "--input",
                       str(stackexchange_sample), "--output", str(output),
                       "--skip", "minhash", "--skip", "consistency", "--skip", "negatives",
                       "--set", "release.shard_rows=40", "--set", "release.reject_shard_rows=2")
    assert status == 0
    return output


def test_command_line_on_a_built_release(built):
    manifest = json.loads((built / "manifest.json").read_text())
    shards = manifest["datasets"]["stackexchange_title_body"]["shards"]
    assert len(shards) > 1
    last_shard = shards[-1]["key"]
    pair = read_jsonl_gz(built / last_shard)[-1]
    reject = next(row for row in read_jsonl_gz(built / manifest["rejects"]["stackexchange_question_answer"]["shards"][-1]["key"]))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipelines.explain", str(built), *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)

    kept = cli(pair["id"])
    assert kept.returncode == 0, kept.stderr
    assert f"{last_shard} line {len(read_jsonl_gz(built / last_shard)) - 1}" in kept.stdout
    assert pair["provenance"]["url"] in kept.stdout and "consistency  skipped" in kept.stdout
    rejected = cli(reject["id"])
    assert rejected.returncode == 0 and "stage      read" in rejected.stdout
    assert f"reason     {reject['reason']}" in rejected.stdout
    missing = cli("f" * 32)
    assert missing.returncode == 1 and missing.stdout == "" and len(missing.stderr.splitlines()) == 1
