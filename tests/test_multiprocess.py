"""Local parallelism: `--direct_num_workers 2 --direct_running_mode multi_processing` (Beam's own runner,
worker processes with the pipeline options) gives the same release, byte for byte, as the in-process run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import release_rows, run_build

MULTI_PROCESS = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")


def _release_files(release: Path) -> dict[str, bytes]:
    """Every object of a release except the run record (which says when and where it ran)."""
    return {p.relative_to(release).as_posix(): p.read_bytes() for p in sorted(release.rglob("*"))
            if p.is_file() and not p.relative_to(release).as_posix().startswith("runs/")}


def _assert_identical(in_process: Path, multi_process: Path) -> dict[str, bytes]:
    first, second = _release_files(in_process), _release_files(multi_process)
    assert sorted(first) == sorted(second)
    differing = [key for key in first if first[key] != second[key]]
    assert not differing, f"multi-process release differs in {differing}"
    assert "manifest.json" in first
    return first


def test_cardano_multi_process_release_is_byte_identical(shared_data, tmp_path):
    """The StackExchange dump through read, normalize, exact_dedup and minhash (keyed joins, the distributed
    connected components and the one-worker union-find), sharded and indexed."""
    site = str(shared_data / "stackexchange" / "cardano.stackexchange.com")
    common = ("--source", "stackexchange", "--input", site, "--skip", "consistency", "--skip", "negatives")
    assert run_build(*common, "--output", str(tmp_path / "in_process")) == 0
    assert run_build(*common, "--output", str(tmp_path / "multi_process"), *MULTI_PROCESS) == 0
    files = _assert_identical(tmp_path / "in_process", tmp_path / "multi_process")
    shards = [key for key in files if key.startswith("data/") and key.endswith(".jsonl.gz")]
    assert {key.split("/")[1] for key in shards} == {
        "stackexchange_title_body", "stackexchange_question_answer", "stackexchange_duplicates"}
    assert len(release_rows(tmp_path / "multi_process", "stackexchange_title_body")) > 1000


@pytest.fixture
def small_quora(shared_data, tmp_path) -> Path:
    """The first 300 records of the real Quora sample (the embedding stages are slow on 2 cores)."""
    lines = (shared_data / "quora" / "mini_quora_duplicate_questions.tsv").read_bytes().splitlines(keepends=True)
    path = tmp_path / "quora_duplicate_questions.tsv"
    path.write_bytes(b"".join(lines[:301]))
    return path


def test_embedding_stages_multi_process_release_is_byte_identical(small_quora, tmp_path):
    """Every stage on, consistency and negatives included: the model is loaded in each worker process and the
    blocks' FAISS searches run there, yet scores, ranks and negatives come out the same."""
    common = ("--source", "quora", "--input", str(small_quora))
    assert run_build(*common, "--output", str(tmp_path / "in_process")) == 0
    assert run_build(*common, "--output", str(tmp_path / "multi_process"), *MULTI_PROCESS) == 0
    _assert_identical(tmp_path / "in_process", tmp_path / "multi_process")
    rows = release_rows(tmp_path / "multi_process", "quora_duplicates")
    assert rows and all(row["scores"] for row in rows)  # the embedding stages really ran
    assert any(row["negatives"] for row in rows)
