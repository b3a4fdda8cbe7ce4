"""``--source news``: headline/summary -> article pairs from five public news formats.

One DATASET per format and kind of pair:

| format          | files                               | query -> document        | DATASET                      |
|-----------------|-------------------------------------|--------------------------|------------------------------|
| ``agnews``      | AG News ``train.csv`` / ``test.csv``| title -> description     | ``agnews_title_description`` |
| ``xsum``        | XSum ``.data`` / ``.summary``       | summary -> body          | ``xsum_summary_article``     |
| ``bbc``         | BBC News ``<category>/NNN.txt``     | headline -> body         | ``bbc_title_body``           |
| ``cnn_dailymail`` | CNN/DailyMail ``.story``          | highlights -> article    | ``cnndm_highlights_article`` |
| ``ccnews``      | CC-News-style JSON lines            | title -> text            | ``ccnews_title_text``        |

The format of each file comes from its extension (``.csv``, ``.data``/``.summary``, ``.txt``, ``.story``,
``.json``/``.jsonl``, each optionally ``.gz``), checked against its content for CSV and JSON lines; ``format``
forces one for every file. A file that fits none stops the run with one line. Documentation files in the
input folders (README, classes.txt, ...) are not read (``skip_files``).

Format quirks handled
- AG News: no header; ``""`` escapes; a backslash stands for a line break (``\\\\`` between paragraphs) and
  ``\\$`` for ``$``; the ``&`` of HTML entities was turned into a space (`` #39;``, `` quot;``, `` amp;``), and
  some descriptions carry escaped HTML (``&lt;A HREF=...&gt;``). ``clean_agnews`` repairs all of these.
- XSum: ``[XSUM]URL[XSUM]`` / ``INTRODUCTION`` / ``RESTBODY`` sections (the ``[SN]...[SN]`` / ``FIRST-SENTENCE``
  layout of the original archive is read too).
- BBC: line 1 is the headline, then a blank line and paragraphs; the category is the parent folder.
- CNN/DailyMail: paragraphs, then ``@highlight`` blocks; highlights are joined into one query.
"""

from __future__ import annotations

import codecs
import html
import os
import re
from typing import Iterable, Literal

from pydantic import Field, field_validator

from sources.base import InputError, Source
from sources.readers import (inputs_from_urls, CsvRow, Emitter, FileUnit, Outcome, RawLine, ReadCsv, ReadLines, ReadSection,
                             ReadWholeFiles, check_text, combine, decompressed_head, note_skipped, parse_record,
                             plan_line_units, require_inputs, skip_file, text_field)

NAME = "news"
AGNEWS = "agnews_title_description"
XSUM = "xsum_summary_article"
BBC = "bbc_title_body"
CNNDM = "cnndm_highlights_article"
CCNEWS = "ccnews_title_text"
DATASET_OF = {"agnews": AGNEWS, "xsum": XSUM, "bbc": BBC, "cnn_dailymail": CNNDM, "ccnews": CCNEWS}
LICENSE_OF = {
    "agnews": "research / non-commercial",
    "xsum": "(c) BBC, research use",
    "bbc": "(c) BBC, research use",
    "cnn_dailymail": "(c) CNN / Daily Mail, research use",
    "ccnews": "(c) the original publishers, research use (Common Crawl terms)",
}
AGNEWS_CLASSES = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
EXTENSION_FORMATS = {".csv": "agnews", ".data": "xsum", ".summary": "xsum", ".txt": "bbc",
                     ".story": "cnn_dailymail", ".json": "ccnews", ".jsonl": "ccnews"}
# AG News on a stable address (the copy torchtext downloads); XSum, BBC and CNN/DailyMail ship as archives on
# hosts that come and go: their addresses are listed, commented, in configs/news.yaml.
DEFAULT_URLS = [
    "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/train.csv",
    "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv",
]


class NewsConfig(ReadSection):
    urls: list[str] = Field(default_factory=lambda: list(DEFAULT_URLS))
    format: Literal["auto", "agnews", "xsum", "bbc", "cnn_dailymail", "ccnews"] = "auto"
    clean_agnews: bool = True
    # One-article-per-file formats: a file larger than this is rejected (oversized_file).
    max_file_bytes: int = Field(4 * (1 << 20), ge=1024)
    # BBC's original archive has a few files that are not UTF-8; name an encoding (e.g. cp1252) to read them
    # instead of rejecting them (invalid_utf8).
    fallback_encoding: str | None = None
    ccnews_title_field: str = "title"
    ccnews_text_field: str = "text"

    @field_validator("fallback_encoding")
    @classmethod
    def _known_encoding(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                codecs.lookup(name)
            except LookupError:
                raise ValueError(f"unknown encoding {name!r}") from None
        return name


# --------------------------------------------------------------------------------------------------------------
# AG News.

# The "&" of an entity became a space: " #39;" " quot;" " amp;". Only the entities seen in the data are named,
# so prose like "it is not; ..." is never mistaken for "&not;".
_AG_BROKEN_ENTITY = re.compile(r"(?: |^)(#\d{1,7}|#x[0-9a-fA-F]{1,6}|quot|amp|lt|gt|apos|nbsp);")
_AG_INLINE_TAG = re.compile(r"</?(?:a|b|i|u|font|em|strong|span|sup|sub)\b[^<>]*>", re.IGNORECASE)
_AG_BLOCK_TAG = re.compile(r"</?(?:p|br|div|img)\b[^<>]*>", re.IGNORECASE)
_AG_DOLLAR = re.compile(r"\\\$")
_AG_BACKSLASHES = re.compile(r"\\+")
_SPACES = re.compile(r"[ \t]+")


def clean_agnews(text: str) -> str:
    """Repairs AG News artefacts: broken entities, escaped HTML, backslash line breaks."""
    text = _AG_BROKEN_ENTITY.sub(lambda match: "&" + match.group(1) + ";", text)
    text = html.unescape(text)
    text = _AG_INLINE_TAG.sub("", text)
    text = _AG_BLOCK_TAG.sub(" ", text)
    text = _AG_DOLLAR.sub("$", text)
    text = _AG_BACKSLASHES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


class AgNewsRows:
    def __init__(self, config: NewsConfig):
        self.clean = clean_agnews if config.clean_agnews else None
        self.max_field_chars = config.max_field_chars

    def __call__(self, row: CsvRow, emitter: Emitter) -> Iterable[Outcome]:
        location = f"{emitter.unit.name}:{row.first_line}"
        if len(row.fields) != 3:
            yield emitter.reject("malformed_line", record=location, raw=row.raw,
                                 detail={"error": f"{len(row.fields)} fields, expected 3 (class, title, "
                                                  "description)", "lines": [row.first_line, row.last_line]})
            return
        label, title, description = row.fields
        query, problem = check_text(title, "title", self.max_field_chars, clean=self.clean)
        document, document_problem = check_text(description, "description", self.max_field_chars, clean=self.clean)
        problem = problem or document_problem
        category = AGNEWS_CLASSES.get(label.strip(), label.strip()[:20] or None)
        if problem is not None:
            yield emitter.reject(problem.reason, record=location, detail=problem.detail, raw=row.raw,
                                 category=category)
            return
        yield emitter.pair(query=query, document=document, record=location, category=category)


# --------------------------------------------------------------------------------------------------------------
# One article per file.

_SECTION = re.compile(r"^\[(XSUM|SN)\]([A-Z][A-Z-]*)\[\1\]\s*$", re.MULTILINE)


def xsum_sections(text: str) -> dict[str, str]:
    """``[XSUM]NAME[XSUM]`` (or ``[SN]NAME[SN]``) headed sections -> {NAME: body}."""
    sections: dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        sections[match.group(2)] = text[match.end():end].strip()
    return sections


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name[:-3] if name.endswith(".gz") else name))[0]


class ArticleFiles:
    """A whole file -> one outcome, by the unit's format (xsum, bbc, cnn_dailymail)."""

    def __init__(self, config: NewsConfig):
        self.max_field_chars = config.max_field_chars

    def __call__(self, text: str, emitter: Emitter) -> Iterable[Outcome]:
        parse = {"xsum": self._xsum, "bbc": self._bbc, "cnn_dailymail": self._story}[emitter.unit.fmt]
        yield from parse(text, emitter)

    def _pair_or_reject(self, emitter: Emitter, query: str | None, document: str | None, query_name: str,
                        document_name: str, raw: str, **extra) -> Outcome:
        record = emitter.unit.name
        if query is None or document is None:
            missing = query_name if query is None else document_name
            return emitter.reject("missing_field", record=record, detail={"field": missing}, raw=raw, **extra)
        query, problem = check_text(query, query_name, self.max_field_chars)
        document, document_problem = check_text(document, document_name, self.max_field_chars)
        problem = problem or document_problem
        if problem is not None:
            return emitter.reject(problem.reason, record=record, detail=problem.detail, raw=raw, **extra)
        return emitter.pair(query=query, document=document, record=record, **extra)

    def _xsum(self, text: str, emitter: Emitter) -> Iterable[Outcome]:
        sections = xsum_sections(text)
        summary = sections.get("INTRODUCTION", sections.get("FIRST-SENTENCE"))
        body = sections.get("RESTBODY")
        url = sections.get("URL") or None
        yield self._pair_or_reject(emitter, summary, body, "INTRODUCTION", "RESTBODY", text,
                                   bbc_id=_stem(emitter.unit.name), url=url.split()[0] if url else None)

    def _bbc(self, text: str, emitter: Emitter) -> Iterable[Outcome]:
        headline, _, rest = text.strip("\n").partition("\n")
        paragraphs = [paragraph.strip() for paragraph in re.split(r"\n\s*\n", rest) if paragraph.strip()]
        parts = emitter.unit.uri.replace("\\", "/").split("/")
        category = parts[-2] if len(parts) >= 2 and parts[-2] else None  # the folder the file sits in
        yield self._pair_or_reject(emitter, headline.strip() or None, "\n\n".join(paragraphs) or None, "headline",
                                   "body", text, category=category)

    def _story(self, text: str, emitter: Emitter) -> Iterable[Outcome]:
        article_part, marker, highlight_part = text.partition("@highlight")
        paragraphs = [paragraph.strip() for paragraph in re.split(r"\n\s*\n", article_part) if paragraph.strip()]
        highlights = []
        if marker:
            for block in ("@highlight" + highlight_part).split("@highlight")[1:]:
                sentence = " ".join(block.split())
                if sentence:
                    highlights.append(sentence if sentence[-1] in ".!?\"'" else sentence + ".")
        parts = emitter.unit.uri.replace("\\", "/").split("/")
        outlet = next((part for part in reversed(parts) if part in ("cnn", "dailymail")), None)
        yield self._pair_or_reject(emitter, " ".join(highlights) or None, "\n\n".join(paragraphs) or None,
                                   "highlights", "article", text, story_id=_stem(emitter.unit.name),
                                   outlet=outlet)


# --------------------------------------------------------------------------------------------------------------
# CC-News JSON lines.

class CcNewsRows:
    def __init__(self, config: NewsConfig):
        self.max_field_chars = config.max_field_chars
        self.title_field = config.ccnews_title_field
        self.text_field = config.ccnews_text_field

    def __call__(self, text: str, raw: RawLine, emitter: Emitter) -> Iterable[Outcome]:
        location = f"{emitter.unit.name}:{raw.line}"
        record, problem = parse_record(text)
        if record is None:
            yield emitter.reject("malformed_line", record=location, detail={"error": problem}, raw=text)
            return
        url = record.get("url") if isinstance(record.get("url"), str) else None
        domain = record.get("domain") if isinstance(record.get("domain"), str) else None
        query, query_problem = text_field(record, self.title_field, self.max_field_chars)
        document, document_problem = text_field(record, self.text_field, self.max_field_chars)
        field_problem = query_problem or document_problem
        if field_problem is not None:
            yield emitter.reject(field_problem.reason, record=location, detail=field_problem.detail, raw=text,
                                 url=url)
            return
        yield emitter.pair(query=query, document=document, record=location, url=url, domain=domain)


# --------------------------------------------------------------------------------------------------------------
# Planning.

def _extension(name: str) -> str:
    base = name.lower()
    if base.endswith(".gz"):
        base = base[:-3]
    return os.path.splitext(base)[1]


def detect_format(name: str, uri: str, head_loader, title_field: str = "title",
                  text_field_name: str = "text") -> str:
    """A file's format from its extension, confirmed by its first bytes for CSV and JSON lines."""
    fmt = EXTENSION_FORMATS.get(_extension(name))
    if fmt is None:
        raise InputError(f"unknown format: {uri}: news reads .csv (AG News), .data/.summary (XSum), .txt (BBC), "
                         ".story (CNN/DailyMail), .json/.jsonl (CC-News); set source.format to force one")
    if fmt == "agnews":
        head, _ = head_loader()
        first = head.split(b"\n", 1)[0].decode("utf-8-sig", "replace")
        if not re.match(r'^"?\d+"?,', first):
            raise InputError(f"unknown format: {uri}: not an AG News CSV (class index, title, description)")
    if fmt == "ccnews":
        head, _ = head_loader()
        lines = [line for line in head.split(b"\n")[:-1] if line.strip()] or [head]
        records = [parse_record(line.decode("utf-8-sig", "replace"))[0] for line in lines[:20]]
        if records[0] is None:
            raise InputError(f"unknown format: {uri}: its first line is not a JSON object")
        if not any(record is not None and title_field in record and text_field_name in record
                   for record in records):
            raise InputError(f"unknown format: {uri}: no record among the first has '{title_field}' and "
                             f"'{text_field_name}' (CC-News); set source.ccnews_title_field / ccnews_text_field")
    return fmt


def plan(inputs, config: NewsConfig, context=None) -> dict[str, list[FileUnit]]:
    require_inputs(inputs, NAME)
    groups: dict[str, list[FileUnit]] = {"csv": [], "files": [], "lines": []}
    skipped = []
    for item in inputs:
        if skip_file(item.name, config.skip_files):
            skipped.append(item.name)
            continue
        cache: dict[str, tuple[bytes, str]] = {}

        def head_loader(uri=item.uri, cache=cache):
            if "head" not in cache:
                cache["head"] = decompressed_head(uri, 64 * 1024)
            return cache["head"]

        fmt = config.format if config.format != "auto" else detect_format(
            item.name, item.uri, head_loader, config.ccnews_title_field, config.ccnews_text_field)
        # One-article files are many: their compression is looked at when each is read, not here.
        compression = head_loader()[1] if fmt in ("agnews", "ccnews") else "none"
        unit = FileUnit(item.uri, item.name, fmt=fmt, dataset=DATASET_OF[fmt], license=LICENSE_OF[fmt],
                        compression=compression, options=(("delimiter", ","), ("header", False)))
        if fmt == "agnews":
            groups["csv"].append(unit)
        elif fmt == "ccnews":
            groups["lines"].extend(plan_line_units(unit, item.size, config.split_bytes))
        else:
            groups["files"].append(unit)
    note_skipped(context, skipped)
    if not any(groups.values()):
        raise InputError("--source news: every input is a documentation file; nothing to read")
    return groups


def read(inputs, source_config: NewsConfig, context):
    groups = plan(inputs, source_config, context)
    policy = context.policy
    parts = []
    if groups["csv"]:
        parts.append(("AgNews", ReadCsv(groups["csv"], NAME, AgNewsRows(source_config),
                                        max_line_bytes=source_config.max_line_bytes,
                                        max_field_chars=source_config.max_field_chars, policy=policy)))
    if groups["files"]:
        parts.append(("Articles", ReadWholeFiles(groups["files"], NAME, ArticleFiles(source_config),
                                                 max_file_bytes=source_config.max_file_bytes, policy=policy,
                                                 fallback_encoding=source_config.fallback_encoding)))
    if groups["lines"]:
        parts.append(("CcNews", ReadLines(groups["lines"], NAME, CcNewsRows(source_config),
                                          max_line_bytes=source_config.max_line_bytes, policy=policy)))
    return combine(parts)


default_inputs = inputs_from_urls(NAME)


SOURCE = Source(name=NAME, config_model=NewsConfig, read=read, default_inputs=default_inputs,
                description="AG News, XSum, BBC News, CNN/DailyMail, CC-News: headline/summary -> article")
