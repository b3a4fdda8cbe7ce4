"""release.reject_texts: false leaves no text of any input row in any reject, for every source.

Each source gets a small input whose rows all carry a marker word in their texts: good rows, exact duplicates
and too-short pairs (stage rejects) and broken rows (read rejects, which otherwise keep a raw prefix). Built with
``--set release.reject_texts=false``, no reject may contain the marker anywhere; built with the default, the
same rejects do carry it (so the check can fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core.records import make_input_reject, make_reject
from tests.helpers import NO_TEXTS, release_rejects, run_build

MARKER = "zebramarker"
STAGES = ("--skip", "consistency", "--skip", "negatives")


def _pair_rows(count: int = 6) -> list[dict]:
    rows = [{"id": f"r{n}", "query": f"How do I {MARKER} thing {n}?",
             "document": f"You {MARKER} thing {n} by turning the knob slowly until it hums."} for n in range(count)]
    rows.append(dict(rows[0], id="copy"))                                   # exact duplicate
    rows.append({"id": "short", "query": f"{MARKER}?", "document": MARKER})   # too short for normalize
    return rows


def _stackexchange(folder: Path) -> list[str]:
    site = folder / "tiny.stackexchange.com"
    site.mkdir()
    rows = [f'<row Id="{n}" PostTypeId="1" Score="1" Title="A {MARKER} question {n}" '
            f'Body="&lt;p&gt;A body about {MARKER} with enough words {n}.&lt;/p&gt;" />' for n in (1, 2)]
    rows += [f'<row PostTypeId="1" Title="No id {MARKER}" Body="b" />',          # missing_id: raw row text
             f'<row Id="5" PostTypeId="1" Title="{MARKER} broken',                # malformed row: raw row text
             f'<row Id="6" PostTypeId="1" Score="1" Title="" Body="&lt;p&gt;{MARKER} body&lt;/p&gt;" />']
    (site / "Posts.xml").write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
                                    + "".join(f"  {row}\n" for row in rows) + "</posts>\n", encoding="utf-8")
    return [str(site)]


def _quora(folder: Path) -> list[str]:
    path = folder / "quora.tsv"
    lines = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
    lines += [f"{n}\t{2 * n}\t{2 * n + 1}\tHow can I {MARKER} topic {n}?\tWhat is the {MARKER} way {n}?\t1"
              for n in range(1, 5)]
    lines += [f"9\t18\t19\tHow can I {MARKER} topic 1?\tWhat is the {MARKER} way 1?\t1",  # duplicate texts
              f"10\t20\t21\t{MARKER} with a missing column"]
    path.write_bytes(("\n".join(lines) + "\n").encode() + f"11\t22\t23\t{MARKER} nul\x00\tq\t1\n".encode())
    return [str(path)]


def _amazon(folder: Path) -> list[str]:
    path = folder / "reviews.json"
    rows = [json.dumps({"overall": 5.0, "asin": f"B{n:09d}", "summary": f"Sturdy {MARKER} {n}",
                        "reviewText": f"The {MARKER} number {n} held up for a year of daily use."}) for n in range(4)]
    rows.append(rows[0])
    rows.append('{"summary": "' + MARKER + ' broken json')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return [str(path)]


def _news(folder: Path) -> list[str]:
    path = folder / "cc.jsonl"
    rows = [json.dumps({"title": f"A {MARKER} title {n}", "text": f"Some {MARKER} article text {n} in words."})
            for n in range(4)]
    rows.append('{"title": "' + MARKER + ' broken json')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return [str(path)]


def _jsonl(folder: Path) -> list[str]:
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _pair_rows())
                    + '{"query": "' + MARKER + ' broken json\n'
                    + json.dumps({"id": "nodoc", "query": f"{MARKER} without a document"}) + "\n", encoding="utf-8")
    return [str(path)]


def _parquet(folder: Path) -> list[str]:
    rows = _pair_rows() + [{"id": "nodoc", "query": f"{MARKER} without a document", "document": None}]
    path = folder / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return [str(path)]


def _hf(folder: Path) -> list[str]:
    rows = _pair_rows() + [{"id": "nodoc", "query": f"{MARKER} without a document", "document": None}]
    saved = folder / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    return [str(saved)]


SOURCES = {"stackexchange": _stackexchange, "quora": _quora, "amazon": _amazon, "news": _news,
           "jsonl": _jsonl, "parquet": _parquet, "hf": _hf}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_no_row_text_in_any_reject_without_reject_texts(source, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = SOURCES[source](inputs)
    common = ("--source", source, *[part for path in paths for part in ("--input", path)], *STAGES)

    private = tmp_path / "private"
    assert run_build(*common, "--output", str(private), "--set", "release.reject_texts=false") == 0
    rejects = release_rejects(private)
    assert rejects and {r["stage"] for r in rejects} >= {"read"}
    for reject in rejects:
        assert not {"query", "document", "raw"} & set(reject), reject
        assert MARKER not in json.dumps(reject), reject

    audit = tmp_path / "audit"
    assert run_build(*common, "--output", str(audit)) == 0
    audited = release_rejects(audit)
    assert sorted(r["reason"] for r in audited) == sorted(r["reason"] for r in rejects)
    assert any(MARKER in json.dumps(reject) for reject in audited if reject["stage"] == "read")


def test_forgetting_the_policy_is_a_type_error():
    pair = {"id": "x", "query": MARKER, "document": MARKER}
    with pytest.raises(TypeError):
        make_reject(pair, stage="normalize", reason="too_short")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        make_input_reject(dataset="d", source="s", provenance={}, reason="r", raw=MARKER)  # type: ignore[call-arg]
    assert "raw" not in make_input_reject(dataset="d", source="s", provenance={}, reason="r", raw=MARKER,
                                          policy=NO_TEXTS)
