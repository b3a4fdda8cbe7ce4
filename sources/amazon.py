"""``--source amazon``: McAuley's Amazon reviews and product Q&A -> ``amazon_title_review``,
``amazon_question_answer``.

Formats (detected per file from its first records, or forced with ``source.format``)
- ``reviews_2014``: JSON lines with ``summary`` (title) and ``reviewText``, ``helpful: [h, total]``.
- ``reviews_2018``: the same fields plus ``verified``, ``vote`` (a string), ``style``; key order varies.
- ``reviews_2023``: JSON lines with ``title`` and ``text`` (``<br />`` line breaks), ``rating``,
  ``parent_asin``.
- ``qa``: the 2016 Q&A files (``qa_*.json.gz``): one Python dict literal per line (single quotes, not JSON),
  ``question`` -> ``answer``. Parsed with ``ast.literal_eval`` (literals only), never ``eval``.
- ``qa_multi``: the multiple-answer Q&A files (``QA_*.json.gz``): ``questions: [{questionText, answers:
  [{answerText}]}]``; every (question, answer) is one pair, record ``file:line/qI/aJ``.
Lines may be JSON or Python literals in any of them (the 2014 dumps mixed both); gzip or plain.

Rules
- HTML entities (``&quot;``, ``&amp;``) are decoded; ``<br />`` becomes a line break.
- A review whose title matches ``uninformative_titles`` ("Five Stars", "Great", ...: boilerplate that Amazon
  filled in or that says nothing about the review) is a reject ``uninformative_title`` in
  ``amazon_title_review``. Reviews repeated across product variants are kept here; exact dedup removes them.
- Rejects: ``malformed_line``, ``missing_field`` (e.g. the reviews without ``reviewText``), ``bad_field_type``,
  ``empty_text``, ``oversized_field``, ``oversized_line``, ``invalid_utf8``, ``nul_byte``, ``truncated_input``.
Reviewer ids and names are not carried: provenance holds the file, line, product (asin) and licence.
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable, Literal

from pydantic import Field, field_validator

from sources.base import InputError, Source
from sources.readers import (inputs_from_urls, Emitter, FieldProblem, FileUnit, Outcome, RawLine, ReadLines, ReadSection, decompressed_head,
                             note_skipped, parse_record, plan_line_units, require_inputs, skip_file, text_field)

NAME = "amazon"
TITLE_REVIEW = "amazon_title_review"
QUESTION_ANSWER = "amazon_question_answer"
LICENSE = "research use (McAuley et al.)"
FORMATS = ("reviews_2014", "reviews_2018", "reviews_2023", "qa", "qa_multi")
DATASET_OF = {"reviews_2014": TITLE_REVIEW, "reviews_2018": TITLE_REVIEW, "reviews_2023": TITLE_REVIEW,
              "qa": QUESTION_ANSWER, "qa_multi": QUESTION_ANSWER}
# query field, document field per format
FIELDS = {"reviews_2014": ("summary", "reviewText"), "reviews_2018": ("summary", "reviewText"),
          "reviews_2023": ("title", "text"), "qa": ("question", "answer")}

DEFAULT_URLS = [
    "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/AMAZON_FASHION_5.json.gz",
    "http://jmcauley.ucsd.edu/data/amazon/qa/qa_Appliances.json.gz",
]
DEFAULT_UNINFORMATIVE_TITLES = [
    r"(one|two|three|four|five|[0-5](\.[05])?)[ -]?stars?",
    r"(great|good|nice|ok|okay|fine|excellent|awesome|perfect|amazing|cute|love|love it|loved it|like it|"
    r"great product|good product|nice product|works great|works well|as described|as expected|very good|"
    r"very nice|recommended|thank you|thanks|yes|no|wow|meh|bad|terrible|poor|junk|returned)",
    r"\W*",
]
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SNIFF_RECORDS = 20


class AmazonConfig(ReadSection):
    urls: list[str] = Field(default_factory=lambda: list(DEFAULT_URLS))
    format: Literal["auto", "reviews_2014", "reviews_2018", "reviews_2023", "qa", "qa_multi"] = "auto"
    uninformative_titles: list[str] = Field(default_factory=lambda: list(DEFAULT_UNINFORMATIVE_TITLES))
    decode_html: bool = True

    @field_validator("uninformative_titles")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from None
        return patterns


def classify(record: dict[str, Any]) -> str | None:
    """Which McAuley format one record is written in (None: none of them)."""
    if isinstance(record.get("questions"), list):
        return "qa_multi"
    if "question" in record and ("answer" in record or "asin" in record):
        return "qa"
    if "reviewText" in record or ("summary" in record and ("overall" in record or "asin" in record)):
        if any(key in record for key in ("vote", "verified", "style", "image")):
            return "reviews_2018"
        return "reviews_2014"
    if "text" in record and "title" in record and any(key in record for key in ("rating", "parent_asin", "asin")):
        return "reviews_2023"
    return None


def detect_format(head: bytes, where: str) -> str:
    """The format of a file from its first records; InputError (one line) when none is recognised."""
    lines = head.split(b"\n")
    if len(lines) > 1:
        lines = lines[:-1]  # the last piece of a head may be cut mid-line
    seen = 0
    for raw in lines:
        text = raw.decode("utf-8-sig", "replace").strip()
        if not text:
            continue
        seen += 1
        record, _problem = parse_record(text)
        if record is not None:
            found = classify(record)
            if found is not None:
                return found
        if seen >= _SNIFF_RECORDS:
            break
    raise InputError(f"unknown format: {where}: its first records are none of {', '.join(FORMATS)} "
                     "(set source.format to force one)")


class AmazonRows:
    """One line of a McAuley file -> its outcomes (one; several for qa_multi)."""

    def __init__(self, config: AmazonConfig):
        self.max_field_chars = config.max_field_chars
        self.decode_html = config.decode_html
        self.uninformative = [re.compile(pattern, re.IGNORECASE) for pattern in config.uninformative_titles]

    def clean(self, text: str) -> str:
        text = _BR.sub("\n", text)
        return html.unescape(text) if self.decode_html else text

    def is_uninformative(self, title: str) -> bool:
        core = title.strip().rstrip(".!?").strip()
        return any(pattern.fullmatch(core) for pattern in self.uninformative)

    def __call__(self, text: str, raw: RawLine, emitter: Emitter) -> Iterable[Outcome]:
        fmt = emitter.unit.fmt
        location = f"{emitter.unit.name}:{raw.line}"
        record, problem = parse_record(text)
        if record is None:
            yield emitter.reject("malformed_line", record=location, detail={"error": problem}, raw=text)
            return
        asin = record.get("parent_asin") or record.get("asin")
        asin = asin if isinstance(asin, str) else None
        if fmt == "qa_multi":
            yield from self._multi(record, location, text, asin, emitter)
            return
        query_field, document_field = FIELDS[fmt]
        query, query_problem = text_field(record, query_field, self.max_field_chars, clean=self.clean)
        document, document_problem = text_field(record, document_field, self.max_field_chars, clean=self.clean)
        field_problem = query_problem or document_problem
        if field_problem is not None:
            yield emitter.reject(field_problem.reason, record=location, detail=field_problem.detail, raw=text,
                                 asin=asin, format=fmt)
            return
        pair = emitter.pair(query=query, document=document, record=location, asin=asin, format=fmt)
        if emitter.unit.dataset == TITLE_REVIEW and self.is_uninformative(query):
            yield emitter.filtered(pair, "uninformative_title", {"title": query[:200]})
        else:
            yield pair

    def _multi(self, record: dict[str, Any], location: str, text: str, asin: str | None,
               emitter: Emitter) -> Iterable[Outcome]:
        questions = record.get("questions")
        if not isinstance(questions, list) or not questions:
            yield emitter.reject("missing_field", record=location, detail={"field": "questions"}, raw=text,
                                 asin=asin, format="qa_multi")
            return
        for q_index, entry in enumerate(questions):
            where = f"{location}/q{q_index}"
            if not isinstance(entry, dict):
                yield emitter.reject("bad_field_type", record=where, detail={"field": "questions[]"}, asin=asin,
                                     format="qa_multi")
                continue
            question, problem = text_field(entry, "questionText", self.max_field_chars, clean=self.clean)
            answers = entry.get("answers")
            if problem is None and (not isinstance(answers, list) or not answers):
                problem = FieldProblem("missing_field", {"field": "answers"})
            if problem is not None:
                yield emitter.reject(problem.reason, record=where, detail=problem.detail, asin=asin,
                                     format="qa_multi", raw=str(entry)[:2000])
                continue
            for a_index, answer_entry in enumerate(answers):
                answer_where = f"{where}/a{a_index}"
                if not isinstance(answer_entry, dict):
                    yield emitter.reject("bad_field_type", record=answer_where, detail={"field": "answers[]"},
                                         asin=asin, format="qa_multi")
                    continue
                answer, answer_problem = text_field(answer_entry, "answerText", self.max_field_chars,
                                                    clean=self.clean)
                if answer_problem is not None:
                    yield emitter.reject(answer_problem.reason, record=answer_where, detail=answer_problem.detail,
                                         asin=asin, format="qa_multi", raw=str(answer_entry)[:2000])
                    continue
                yield emitter.pair(query=question, document=answer, record=answer_where, asin=asin,
                                   format="qa_multi")


def plan(inputs, config: AmazonConfig, context=None) -> list[FileUnit]:
    require_inputs(inputs, NAME)
    units, skipped = [], []
    for item in inputs:
        if skip_file(item.name, config.skip_files):
            skipped.append(item.name)
            continue
        head, compression = decompressed_head(item.uri)
        fmt = config.format if config.format != "auto" else detect_format(head, item.uri)
        unit = FileUnit(item.uri, item.name, fmt=fmt, dataset=DATASET_OF[fmt], license=LICENSE,
                        compression=compression)
        units.extend(plan_line_units(unit, item.size, config.split_bytes))
    note_skipped(context, skipped)
    if not units:
        raise InputError("--source amazon: every input is a documentation file; nothing to read")
    return units


def read(inputs, source_config: AmazonConfig, context):
    units = plan(inputs, source_config, context)
    return ReadLines(units, NAME, AmazonRows(source_config), max_line_bytes=source_config.max_line_bytes,
                     policy=context.policy)


default_inputs = inputs_from_urls(NAME)


SOURCE = Source(name=NAME, config_model=AmazonConfig, read=read, default_inputs=default_inputs,
                description="McAuley Amazon reviews (2014/2018/2023) and Q&A -> amazon_title_review, "
                            "amazon_question_answer")
