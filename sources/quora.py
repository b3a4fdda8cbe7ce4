"""``--source quora``: Quora Question Pairs -> ``quora_duplicates``.

Reads the official TSV (``quora_duplicate_questions.tsv``: id, qid1, qid2, question1, question2, is_duplicate)
and Kaggle's comma-separated ``train.csv`` with the same columns, as CSV with quoting: fields hold ``""``
escapes and, in a few records, newlines. Columns are found by the header, so their order does not matter.

Rules
- ``is_duplicate = 1`` -> one pair in ``quora_duplicates``. The pair is symmetric; ``direction`` picks the
  query: ``shorter_first`` (default) makes the shorter question the query (ties: the smaller qid), because a
  short question reads most like a search query and the rule depends only on the row's content.
  ``file_order`` keeps question1 -> question2; ``both`` emits the two directions (two pairs per row).
- ``is_duplicate = 0`` -> by default a reject with reason ``not_duplicate`` (texts kept for auditors), so
  pairs + rejects account for every record; with ``non_duplicates: emit`` they become labelled pairs in their
  own dataset ``quora_non_duplicates`` (never mixed into the positives).
- Everything else -> a reject: ``malformed_line`` (wrong column count, label not 0/1), ``empty_text``,
  ``oversized_field``, ``invalid_utf8``, ``nul_byte``.
"""

from __future__ import annotations

import csv
from typing import Any, Iterable, Literal

from pydantic import Field

from sources.base import InputError, Source
from sources.readers import (inputs_from_urls, CsvRow, Emitter, FileUnit, Outcome, ReadCsv, ReadSection, check_text,
                             decompressed_head, note_skipped, require_inputs, skip_file)

NAME = "quora"
DUPLICATES = "quora_duplicates"
NON_DUPLICATES = "quora_non_duplicates"
LICENSE = "Quora terms (non-commercial)"
OFFICIAL_URL = "http://qim.fs.quoracdn.net/quora_duplicate_questions.tsv"
COLUMNS = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")


class QuoraConfig(ReadSection):
    urls: list[str] = Field(default_factory=lambda: [OFFICIAL_URL])
    delimiter: Literal["auto", "tab", "comma"] = "auto"
    direction: Literal["shorter_first", "file_order", "both"] = "shorter_first"
    non_duplicates: Literal["reject", "emit"] = "reject"


def sniff_header(head: bytes, where: str, delimiter: str = "auto") -> tuple[str, dict[str, int]]:
    """The delimiter and column positions from the header line; InputError when it is not a Quora file."""
    first_line = head.split(b"\n", 1)[0].rstrip(b"\r")
    if first_line.startswith(b"\xef\xbb\xbf"):
        first_line = first_line[3:]
    text = first_line.decode("utf-8", "replace")
    if delimiter == "auto":
        delimiter = "\t" if "\t" in text else ","
    else:
        delimiter = "\t" if delimiter == "tab" else ","
    names = [name.strip().lower() for name in next(csv.reader([text], delimiter=delimiter), [])]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise InputError(f"unknown format: {where} is not a Quora Question Pairs file (its header lacks "
                         f"{', '.join(missing)}; expected {', '.join(COLUMNS)})")
    return delimiter, {column: names.index(column) for column in COLUMNS}


def _qid_key(qid: str) -> tuple[int, Any]:
    return (0, int(qid)) if qid.isdigit() else (1, qid)


class QuoraRows:
    """One CSV record -> one outcome (two with ``direction: both``)."""

    def __init__(self, config: QuoraConfig):
        self.direction = config.direction
        self.emit_non_duplicates = config.non_duplicates == "emit"
        self.max_field_chars = config.max_field_chars

    def __call__(self, row: CsvRow, emitter: Emitter) -> Iterable[Outcome]:
        columns: dict[str, int] = dict(emitter.unit.option("columns", ()))
        fields = row.fields
        location = f"{emitter.unit.name}:{row.first_line}"
        if len(fields) != emitter.unit.option("width", len(COLUMNS)):
            yield emitter.reject("malformed_line", record=location, raw=row.raw, line=row.first_line,
                                 detail={"error": f"{len(fields)} fields, expected "
                                                  f"{emitter.unit.option('width', len(COLUMNS))}",
                                         "lines": [row.first_line, row.last_line]})
            return
        record_id = fields[columns["id"]].strip() or location
        label = fields[columns["is_duplicate"]].strip()
        if label not in ("0", "1"):
            yield emitter.reject("malformed_line", record=record_id, raw=row.raw, line=row.first_line,
                                 detail={"error": f"is_duplicate is {label[:20]!r}, expected 0 or 1"})
            return
        duplicate = label == "1"
        dataset = NON_DUPLICATES if (not duplicate and self.emit_non_duplicates) else DUPLICATES
        qid1, qid2 = fields[columns["qid1"]].strip(), fields[columns["qid2"]].strip()
        question1, problem1 = check_text(fields[columns["question1"]], "question1", self.max_field_chars)
        question2, problem2 = check_text(fields[columns["question2"]], "question2", self.max_field_chars)
        problem = problem1 or problem2
        if problem is not None:
            yield emitter.reject(problem.reason, record=record_id, detail=problem.detail, raw=row.raw,
                                 dataset=dataset, line=row.first_line, qids=[qid1, qid2])
            return
        first = ((question1, qid1), (question2, qid2))
        if self.direction == "shorter_first":
            first = tuple(sorted(first, key=lambda item: (len(item[0].strip()), _qid_key(item[1]))))
        directions = [first]
        if self.direction == "both":
            directions.append((first[1], first[0]))
        for index, ((query, query_qid), (document, document_qid)) in enumerate(directions):
            ref = f"{emitter.unit.name}:{record_id}" + ("/reversed" if index else "")
            pair = emitter.pair(query=query, document=document, record=record_id, ref=ref, dataset=dataset,
                                line=row.first_line, qids=[query_qid, document_qid], is_duplicate=duplicate)
            if duplicate or self.emit_non_duplicates:
                yield pair
            else:
                yield emitter.filtered(pair, "not_duplicate")
                return  # one reject per non-duplicate record, whatever the direction setting


def plan(inputs, config: QuoraConfig, context=None) -> list[FileUnit]:
    require_inputs(inputs, NAME)
    units, skipped = [], []
    for item in inputs:
        if skip_file(item.name, config.skip_files):
            skipped.append(item.name)
            continue
        head, compression = decompressed_head(item.uri, 64 * 1024)
        delimiter, columns = sniff_header(head, item.uri, config.delimiter)
        width = len(next(csv.reader([head.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")],
                                    delimiter=delimiter)))
        units.append(FileUnit(item.uri, item.name, fmt="quora_pairs", dataset=DUPLICATES, license=LICENSE,
                              compression=compression,
                              options=(("delimiter", delimiter), ("header", True),
                                       ("columns", tuple(sorted(columns.items()))), ("width", width))))
    note_skipped(context, skipped)
    if not units:
        raise InputError("--source quora: every input is a documentation file; nothing to read")
    return units


def read(inputs, source_config: QuoraConfig, context):
    units = plan(inputs, source_config, context)
    return ReadCsv(units, NAME, QuoraRows(source_config), max_line_bytes=source_config.max_line_bytes,
                   max_field_chars=source_config.max_field_chars,
                   policy=context.policy)


default_inputs = inputs_from_urls(NAME)


SOURCE = Source(name=NAME, config_model=QuoraConfig, read=read, default_inputs=default_inputs,
                description="Quora Question Pairs (TSV or Kaggle CSV): duplicate questions -> quora_duplicates")
