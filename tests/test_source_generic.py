"""--source jsonl / parquet / hf: the same pairs from JSON lines, pyarrow Parquet and a datasets folder; bad
inputs; splittable reads; and every source config documents every knob."""

from __future__ import annotations

import collections
import gzip
import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipelines.core.config import CONFIG_DIR, DownloadConfig, load_config, read_yaml
from sources.base import InputError, RunContext, expand_inputs
from sources.generic import SOURCES, HfConfig, JsonlConfig, ParquetConfig, hf_default_inputs
from tests.helpers import KEEP_TEXTS, run_read_transform
from sources.readers import split_outcomes
from sources.registry import get_source

run_beam = run_read_transform


def read(name, paths, config):
    return SOURCES[name].read(expand_inputs([str(path) for path in paths]), config, RunContext(name, KEEP_TEXTS))


ROWS = [{"id": f"pair-{index:03d}", "query": f"How do I do thing {index}?",
         "document": f"You do thing {index} by following these steps."} for index in range(40)]


def _triples(pairs):
    return sorted((p["provenance"]["record"], p["query"], p["document"]) for p in pairs)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    import datasets

    folder = tmp_path_factory.mktemp("pairs")
    jsonl = folder / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    parquet = folder / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet, row_group_size=15)  # three row groups
    saved = folder / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(saved))
    splits = folder / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:30]),
                          "test": datasets.Dataset.from_list(ROWS[30:])}).save_to_disk(str(splits))
    return {"jsonl": jsonl, "parquet": parquet, "hf": saved, "splits": splits}


def test_same_pairs_from_jsonl_parquet_and_datasets(pair_files):
    expected = sorted((row["id"], row["query"], row["document"]) for row in ROWS)
    configs = {"jsonl": JsonlConfig(dataset="my_pairs", license="CC0"),
               "parquet": ParquetConfig(dataset="my_pairs", license="CC0", batch_rows=4),
               "hf": HfConfig(dataset="my_pairs", license="CC0")}
    for name, config in configs.items():
        assert get_source(name) is SOURCES[name]
        pairs, rejects = run_beam(read(name, [pair_files[name]], config))
        assert not rejects, name
        assert _triples(pairs) == expected, name  # the input id is provenance.record
        assert {(p["dataset"], p["source"], p["provenance"]["license"]) for p in pairs} == {("my_pairs", name, "CC0")}
    parquet = read("parquet", [pair_files["parquet"]], ParquetConfig())
    assert len(parquet.units) == 3  # one unit per row group


def test_hf_split_selection_and_hub_name(pair_files, tmp_path, monkeypatch):
    pairs, _ = split_outcomes(read("hf", [pair_files["splits"]], HfConfig(split="test")).run_local())
    assert _triples(pairs) == sorted((r["id"], r["query"], r["document"]) for r in ROWS[30:])
    assert {p["provenance"]["split"] for p in pairs} == {"test"}
    with pytest.raises(InputError, match="split 'validation' is not in"):
        read("hf", [pair_files["splits"]], HfConfig(split="validation"))
    # source.name: a local folder of data files, loaded by datasets.load_dataset into the cache.
    local = tmp_path / "local_dataset"
    local.mkdir()
    (local / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS[:5]), encoding="utf-8")
    download = DownloadConfig(cache_dir=str(tmp_path / "cache"))
    files = hf_default_inputs(HfConfig(name=str(local)), download)
    pairs, rejects = split_outcomes(SOURCES["hf"].read(expand_inputs(files), HfConfig(), RunContext("hf", KEEP_TEXTS))
                                    .run_local())
    assert not rejects and _triples(pairs) == sorted((r["id"], r["query"], r["document"]) for r in ROWS[:5])
    # A Hub name while the Hub is unreachable: one line, at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(InputError) as error:
        hf_default_inputs(HfConfig(name="someone/some-pairs"), download)
    assert "unreachable" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError, match="needs --input"):
        hf_default_inputs(HfConfig(), download)


def test_field_names_nested_paths_and_missing_ids(tmp_path):
    path = tmp_path / "nested.jsonl"
    rows = [{"key": 7, "meta": {"title": "Nested title"}, "body": "Body text of the record."},
            {"meta": {"title": "No key here"}, "body": "Another body text."}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = JsonlConfig(query_field="meta.title", document_field="body", id_field="key")
    pairs, rejects = split_outcomes(read("jsonl", [path], config).run_local())
    assert not rejects
    assert _triples(pairs) == [("7", "Nested title", "Body text of the record."),
                               ("nested.jsonl:2", "No key here", "Another body text.")]
    with pytest.raises(InputError, match="none of the first records has fields 'query' and 'document'"):
        read("jsonl", [path], JsonlConfig())
    with pytest.raises(ValidationError):
        JsonlConfig(dataset="Bad Name!")


def test_bad_jsonl_rows_become_rejects(tmp_path):
    lines = [json.dumps(ROWS[0]).encode(),
             b"{not json",
             b'{"id": "x1", "query": "Bad bytes \xff\xfe", "document": "fine document"}',
             b'{"id": "x2", "query": "NUL \x00 raw", "document": "fine document"}',
             json.dumps({"id": "x3", "query": "Escaped NUL \u0000", "document": "fine document"}).encode(),
             json.dumps({"id": "x4", "query": "q", "document": "d" * 2000}).encode(),
             json.dumps({"id": "x5", "query": "q" * 600}).encode() + b" " * 4000,
             json.dumps({"id": "x6", "query": "  ", "document": "fine document"}).encode(),
             json.dumps({"id": "x7", "query": ["a", "list"], "document": "fine document"}).encode(),
             json.dumps({"id": "x8", "query": "Only a query"}).encode(),
             b"[1, 2]",
             b"",
             json.dumps(ROWS[1]).encode()]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = JsonlConfig(max_field_chars=1000, max_line_bytes=4096)
    pairs, rejects = run_beam(read("jsonl", [path], config))
    assert sorted(p["provenance"]["record"] for p in pairs) == ["pair-000", "pair-001"]
    by_line = {r["provenance"]["record"]: r["reason"] for r in rejects}
    assert by_line == {"bad.jsonl:2": "malformed_line", "bad.jsonl:3": "invalid_utf8", "bad.jsonl:4": "nul_byte",
                       "x3": "nul_byte", "x4": "oversized_field", "bad.jsonl:7": "oversized_line",
                       "x6": "empty_text", "x7": "bad_field_type", "x8": "missing_field",
                       "bad.jsonl:11": "malformed_line"}
    assert all(r["stage"] == "read" and r["dataset"] == "custom_pairs" for r in rejects)


def test_truncated_and_corrupt_inputs_keep_what_was_readable(tmp_path, pair_files):
    many = [dict(row, id=f"{row['id']}-{copy}") for copy in range(60) for row in ROWS]
    whole = gzip.compress("".join(json.dumps(row) + "\n" for row in many).encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    pairs, rejects = run_beam(read("jsonl", [cut], JsonlConfig()))
    assert [r["reason"] for r in rejects] == ["truncated_input"]
    assert 0 < len(pairs) == rejects[0]["detail"]["complete_lines_before"] < len(many)

    disguised = tmp_path / "packed.jsonl"  # gzip is recognised by its magic bytes, not by the name
    disguised.write_bytes(gzip.compress("".join(json.dumps(row) + "\n" for row in ROWS).encode()))
    pairs, rejects = split_outcomes(read("jsonl", [disguised], JsonlConfig()).run_local())
    assert not rejects and len(pairs) == len(ROWS)

    arrow = next(pair_files["hf"].glob("*.arrow")).read_bytes()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "data.arrow").write_bytes(arrow[: len(arrow) - 200])
    pairs, rejects = split_outcomes(read("hf", [broken / "data.arrow"], HfConfig()).run_local())
    assert [r["reason"] for r in rejects] == ["truncated_input"]
    assert rejects[0]["detail"]["rows_read"] == len(pairs) < len(ROWS)

    parquet = pair_files["parquet"].read_bytes()
    cut_parquet = tmp_path / "cut.parquet"
    cut_parquet.write_bytes(parquet[: len(parquet) // 2])
    pairs, rejects = split_outcomes(read("parquet", [cut_parquet], ParquetConfig()).run_local())
    assert not pairs and [r["reason"] for r in rejects] == ["truncated_input"]
    assert rejects[0]["provenance"]["record"] == "cut.parquet"


def test_layout_errors_stop_the_run_with_one_line(tmp_path, pair_files):
    not_parquet = tmp_path / "table.parquet"
    not_parquet.write_text("id,query\n", encoding="utf-8")
    cases = [("parquet", not_parquet, ParquetConfig(), "not a Parquet file"),
             ("parquet", pair_files["parquet"], ParquetConfig(query_field="title"), "no column 'title'"),
             ("hf", pair_files["hf"], HfConfig(document_field="text"), "no column 'text'"),
             ("jsonl", not_parquet, JsonlConfig(), "not JSON lines")]
    for name, path, config, message in cases:
        with pytest.raises(InputError) as error:
            read(name, [path], config)
        assert message in str(error.value) and "\n" not in str(error.value)


def test_split_plain_reads_number_lines_exactly_in_beam(tmp_path):
    many = [dict(row, id=f"{row['id']}-{copy}") for copy in range(30) for row in ROWS]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in many) + "{broken\n", encoding="utf-8")
    config = JsonlConfig().model_copy(update={"split_bytes": 7_000})
    transform = read("jsonl", [path], config)
    assert len(transform.units) > 10
    pairs, rejects = run_beam(transform)
    assert sorted(p["provenance"]["record"] for p in pairs) == sorted(row["id"] for row in many)
    assert [r["provenance"]["record"] for r in rejects] == [f"big.jsonl:{len(many) + 1}"]
    whole_pairs, _ = split_outcomes(read("jsonl", [path], JsonlConfig()).run_local())
    assert sorted(p["id"] for p in pairs) == sorted(p["id"] for p in whole_pairs)


@pytest.mark.parametrize("name", ["quora", "amazon", "news", "jsonl", "parquet", "hf"])
def test_every_knob_is_in_the_shipped_config(name):
    source = get_source(name)
    _config, source_config = load_config(name, source.config_model)
    documented = read_yaml(CONFIG_DIR / f"{name}.yaml")["source"]
    assert set(documented) == set(source.config_model.model_fields)
    defaults = source.config_model()
    assert {key: getattr(source_config, key) for key in documented} == \
        {key: getattr(defaults, key) for key in documented}
    counts = collections.Counter(line.strip().startswith("#") for line in
                                 (CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines())
    assert counts[True] >= len(documented)  # a comment for every knob, at least
