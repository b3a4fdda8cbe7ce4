"""Shared readers: line-numbered reads of plain or gzip files, CSV/TSV records, one-record-per-file inputs.

Every reader works on bytes (never lets Beam decode text) and turns every input row into exactly one outcome:
a pair, or a reject with stage ``read`` and a reason. Problems that belong to no single row (a truncated or
corrupt gzip stream) leave as one reject per file, and the readable part before them is kept.

Work units
    The planner cuts the inputs into :class:`FileUnit` s. A plain line-based file larger than ``split_bytes``
    becomes several byte ranges read in parallel; gzip is not splittable and stays one unit. A line belongs to
    the range that holds its first byte, and line numbers stay exact across ranges: a cheap first pass counts
    the line starts in each range (a side input), so ``name:line`` is the same whatever the split size.

Reject reasons used here
    ``invalid_utf8``, ``nul_byte``, ``oversized_line``, ``oversized_field``, ``oversized_file``,
    ``malformed_line``, ``missing_field``, ``bad_field_type``, ``empty_text``, ``truncated_input``,
    ``corrupt_input``; sources add their own (``not_duplicate``, ``uninformative_title``, ...).
"""

from __future__ import annotations

import ast
import csv
import fnmatch
import io
import itertools
import json
import logging
import pickle
import re
import tokenize
import zlib
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from pydantic import Field

from pipelines.core.errors import PairCurationError
from pipelines.core.metrics import StageMetrics
from pipelines.core.records import RejectPolicy, make_input_reject, make_reject, new_pair
from sources.base import InputError, InputFile, SourceSection, decode_text

log = logging.getLogger(__name__)

STAGE = "read"
MiB = 1 << 20
# How much of a bad row is kept in its reject (make_input_reject bounds it again).
RAW_PREFIX_BYTES = 2000
_CHUNK_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
# Magic bytes of compressions we do not read: a clear error beats a stream of "invalid UTF-8" rejects.
_UNSUPPORTED_MAGIC = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"PK\x03\x04": "zip",
}


DOCUMENTATION_FILES = ("readme*", "license*", "licence*", "*.md", "*.pdf", "*.html", "classes.txt",
                       "manifest*", "checksums*", "*.sha256", "*.md5")


class ReadSection(SourceSection):
    """Knobs every file-reading source shares (documented in each configs/NAME.yaml)."""

    # Downloaded into the cache (download.cache_dir) and read when --input is absent.
    urls: list[str] = Field(default_factory=list)
    # A line longer than this is rejected (oversized_line) without being held in memory.
    max_line_bytes: int = Field(4 * MiB, ge=1024)
    # A text field longer than this (characters) is rejected (oversized_field).
    max_field_chars: int = Field(200_000, ge=100)
    # Plain (uncompressed) line-based files larger than this are read as several ranges in parallel.
    split_bytes: int = Field(64 * MiB, ge=MiB)
    # Documentation files inside input folders (matched on the file name, case-insensitively) are not read.
    skip_files: list[str] = Field(default_factory=lambda: list(DOCUMENTATION_FILES))


# --------------------------------------------------------------------------------------------------------------
# Opening files: raw bytes, compression by magic bytes.

def open_raw(uri: str):
    """A binary file object for a local path or s3:// / gs:// URI; never decompresses by extension."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def read_head(uri: str, size: int = 64 * 1024) -> bytes:
    """The first ``size`` bytes of a file (raises InputError naming the path when it cannot be read)."""
    try:
        with open_raw(uri) as handle:
            return handle.read(size)
    except Exception as exc:  # Beam wraps filesystem failures in its own types
        raise InputError(f"input not readable: {uri}: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}") \
            from None


def compression_of(uri: str, head: bytes | None = None) -> str:
    """``"gzip"`` or ``"none"`` from the magic bytes. Other compressions stop the run with one line."""
    head = read_head(uri, 8) if head is None else head
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    for magic, name in _UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise InputError(f"unsupported compression ({name}) in {uri}: decompress it or recompress with gzip")
    return "none"


def decompressed_head(uri: str, size: int = 256 * 1024) -> tuple[bytes, str]:
    """Up to ``size`` decompressed bytes from the start of a file, and its compression."""
    head = read_head(uri, size)
    compression = compression_of(uri, head)
    if compression == "none":
        return head, compression
    stream = ChunkStream(open_raw(uri), compression)
    out = bytearray()
    try:
        for chunk in stream:
            out += chunk
            if len(out) >= size:
                break
    finally:
        stream.close()
    return bytes(out[:size]), compression


class ChunkStream:
    """Decompressed chunks of a file. Never raises on bad data: after iteration ``problem`` says what ended it.

    ``problem`` is None (clean end), ``("truncated_input", detail)`` (the gzip stream stops before its end
    marker) or ``("corrupt_input", detail)`` (invalid compressed data). Output per step is bounded, so a
    decompression bomb cannot take more memory than one chunk.
    """

    def __init__(self, handle, compression: str, chunk_bytes: int = _CHUNK_BYTES):
        self.handle = handle
        self.compression = compression
        self.chunk_bytes = chunk_bytes
        self.problem: tuple[str, dict[str, Any]] | None = None
        self.compressed_bytes = 0
        self.decompressed_bytes = 0

    def close(self) -> None:
        try:
            self.handle.close()
        except Exception:  # closing a half-read remote stream must not hide the real outcome
            pass

    def __iter__(self) -> Iterator[bytes]:
        if self.compression == "none":
            while True:
                chunk = self.handle.read(self.chunk_bytes)
                if not chunk:
                    return
                self.decompressed_bytes += len(chunk)
                yield chunk
        yield from self._gunzip()

    def _gunzip(self) -> Iterator[bytes]:
        decompressor = zlib.decompressobj(wbits=31)
        in_member = False  # some bytes of the current gzip member have been fed
        pending = b""  # compressed bytes not fed yet
        while True:
            if not pending:
                pending = self.handle.read(self.chunk_bytes)
                if not pending:
                    break
                self.compressed_bytes += len(pending)
            if decompressor.eof:
                # What follows a member is another member (bgzip, appended files) or zero padding.
                if not pending.strip(b"\x00"):
                    pending = b""
                    continue
                decompressor = zlib.decompressobj(wbits=31)
                in_member = False
            try:
                out = decompressor.decompress(pending, self.chunk_bytes)
            except zlib.error as exc:
                self.problem = ("corrupt_input", {"error": str(exc), "compressed_bytes": self.compressed_bytes,
                                                  "decompressed_bytes": self.decompressed_bytes})
                return
            in_member = True
            pending = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
            if out:
                self.decompressed_bytes += len(out)
                yield out
        while in_member and not decompressor.eof:  # output held back by the per-step bound
            try:
                out = decompressor.decompress(b"", self.chunk_bytes)
            except zlib.error as exc:
                self.problem = ("corrupt_input", {"error": str(exc), "decompressed_bytes": self.decompressed_bytes})
                return
            if not out:
                break
            self.decompressed_bytes += len(out)
            yield out
        if in_member and not decompressor.eof:
            self.problem = ("truncated_input", {"compressed_bytes": self.compressed_bytes,
                                                "decompressed_bytes": self.decompressed_bytes})


# --------------------------------------------------------------------------------------------------------------
# Lines.

class RawLine(NamedTuple):
    """One physical line (without its newline), or a problem in place of a line.

    ``problem`` None: ``data`` is the line. ``"oversized_line"``: ``data`` is its first bytes. ``"truncated_input"``
    / ``"corrupt_input"``: the stream ended early; ``data`` is the unfinished last line, if any.
    """

    line: int
    offset: int
    data: bytes
    problem: str | None = None
    detail: dict[str, Any] | None = None


def _find_first_line_start(handle, start: int) -> int | None:
    """The offset of the first line that starts at or after ``start`` (None: no line starts there)."""
    if start == 0:
        return 0
    handle.seek(start - 1)
    position = start - 1
    while True:
        chunk = handle.read(_CHUNK_BYTES)
        if not chunk:
            return None
        newline = chunk.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(chunk)


def iter_lines(uri: str, *, compression: str = "none", start: int = 0, end: int | None = None,
               first_line: int = 1, max_line_bytes: int = 4 * MiB) -> Iterator[RawLine]:
    """The lines of a file (or of the byte range [start, end) of a plain file), numbered from ``first_line``.

    A line belongs to the range holding its first byte; the last one is read past ``end`` to its newline.
    ``first_line`` is the number of the first line starting in the range (the caller counts the lines before
    it). Lines longer than ``max_line_bytes`` come back as ``oversized_line`` without being held in memory.
    """
    handle = open_raw(uri)
    try:
        if compression != "none" and (start or end is not None):
            raise ValueError("a compressed file can only be read whole")
        offset = _find_first_line_start(handle, start) if compression == "none" else 0
        if offset is None:
            return
        if offset:
            handle.seek(offset)
        stream = ChunkStream(handle, compression)
        yield from _split_lines(stream, offset=offset, line=first_line, end=end, max_line_bytes=max_line_bytes)
    finally:
        handle.close()


def _split_lines(stream: ChunkStream, *, offset: int, line: int, end: int | None,
                 max_line_bytes: int) -> Iterator[RawLine]:
    pending = bytearray()
    pending_size = 0  # true length of the current line so far (pending keeps at most a prefix when oversized)
    oversized = False
    line_start = offset
    at_line_start = True
    for chunk in stream:
        position, size = 0, len(chunk)
        while position < size:
            if at_line_start:
                if end is not None and line_start >= end:
                    return
                at_line_start = False
            newline = chunk.find(b"\n", position)
            stop = size if newline < 0 else newline
            piece = stop - position
            if not oversized and pending_size + piece > max_line_bytes:
                oversized = True
                need = RAW_PREFIX_BYTES - len(pending)
                if need > 0:
                    pending += chunk[position:position + need]
                else:
                    del pending[RAW_PREFIX_BYTES:]
            elif not oversized:
                pending += chunk[position:stop]
            pending_size += piece
            if newline < 0:
                break
            if oversized:
                yield RawLine(line, line_start, bytes(pending), "oversized_line",
                              {"bytes": pending_size, "limit": max_line_bytes})
            else:
                yield RawLine(line, line_start, bytes(pending))
            line += 1
            line_start += pending_size + 1
            pending.clear()
            pending_size = 0
            oversized = False
            at_line_start = True
            position = newline + 1
    if stream.problem is not None:
        reason, detail = stream.problem
        yield RawLine(line, line_start, bytes(pending[:RAW_PREFIX_BYTES]), reason,
                      dict(detail, complete_lines_before=line - 1, unfinished_line_bytes=pending_size))
        return
    if not at_line_start:  # a last line without a trailing newline
        if oversized:
            yield RawLine(line, line_start, bytes(pending), "oversized_line",
                          {"bytes": pending_size, "limit": max_line_bytes})
        else:
            yield RawLine(line, line_start, bytes(pending))


def count_line_starts(uri: str, start: int, end: int) -> int:
    """How many lines start in [start, end) of a plain file: newlines in [start-1, end-1), plus one at 0."""
    count = 1 if start == 0 else 0
    scan_from = max(start - 1, 0)
    scan_to = end - 1
    if scan_to <= scan_from:
        return count
    with open_raw(uri) as handle:
        handle.seek(scan_from)
        remaining = scan_to - scan_from
        while remaining > 0:
            chunk = handle.read(min(_CHUNK_BYTES, remaining))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count


def decode_line(data: bytes) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """Bytes of a row -> (text, None, None) or (None, reason, detail) for a NUL byte or invalid UTF-8."""
    nul = data.find(b"\x00")
    if nul >= 0:
        return None, "nul_byte", {"byte": nul}
    text, problem = decode_text(data)
    if problem is not None:
        return None, "invalid_utf8", {"error": problem}
    return text, None, None


def raw_preview(data: bytes) -> str:
    """A printable prefix of a bad row for its reject (invalid bytes shown as U+FFFD)."""
    return data[:RAW_PREFIX_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd")


# --------------------------------------------------------------------------------------------------------------
# Records and fields.

# "\ud800" escapes decode to surrogate code points, which are not characters: no UTF-8 encoder (Beam's coders
# included) accepts them. Only rows with such an escape are looked at again.
_SURROGATE_ESCAPE = re.compile(r"\\(?:u[dD][89a-fA-F]|U0000[dD][89a-fA-F])")


def _join_surrogates(value: Any) -> Any:
    """value with escaped surrogate pairs joined into their characters; UnicodeDecodeError for a lone one."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16") if has_surrogates(value) else value
    if isinstance(value, dict):
        return {_join_surrogates(key): _join_surrogates(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_join_surrogates(item) for item in value)
    return value


def _checked_unicode(value: Any, text: str, kind: str) -> tuple[Any, str | None]:
    if not _SURROGATE_ESCAPE.search(text):
        return value, None
    try:
        return _join_surrogates(value), None
    except UnicodeDecodeError:
        return None, f"invalid {kind}: an escape encodes a lone surrogate (not a character)"
    except RecursionError:
        return None, f"invalid {kind}: too deeply nested"


def parse_json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """One JSON-lines row -> (object, None) or (None, why it is malformed)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"invalid JSON: {str(exc)[:200]}"
    if not isinstance(value, dict):
        return None, f"not a JSON object (a {type(value).__name__})"
    return _checked_unicode(value, text, "JSON")


# ast.literal_eval builds a syntax tree first: ~500 bytes per token, so a 4 MiB line of "1,1,1,..." would take
# ~2 GB. Lines longer than this are tokenized first and refused beyond the token bound (~50 MB of tree).
_LITERAL_CHECK_CHARS = 64 * 1024
_LITERAL_MAX_TOKENS = 100_000


def _literal_tokens_exceed(text: str, limit: int) -> bool:
    """Whether the Python tokenizer finds more than ``limit`` tokens in text (stops counting there)."""
    count = 0
    try:
        for _token in tokenize.generate_tokens(io.StringIO(text).readline):
            count += 1
            if count > limit:
                return True
    except (tokenize.TokenError, SyntaxError):
        pass  # a syntax error after fewer tokens: literal_eval stops there too and says what it is
    return False


def parse_python_literal(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A row written as a Python dict literal (McAuley's loose JSON), parsed safely: literals only, never eval."""
    if len(text) > _LITERAL_CHECK_CHARS and _literal_tokens_exceed(text, _LITERAL_MAX_TOKENS):
        return None, f"invalid Python literal: more than {_LITERAL_MAX_TOKENS} tokens"
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        return None, f"invalid Python literal: {type(exc).__name__}: {str(exc)[:200]}"
    if not isinstance(value, dict):
        return None, f"not a dict literal (a {type(value).__name__})"
    return _checked_unicode(value, text, "Python literal")


def parse_record(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """JSON first; a line that starts like a Python dict literal (``{'``) falls back to the safe literal parser."""
    stripped = text.lstrip()
    if stripped.startswith("{'") or stripped.startswith("{u'"):
        # A JSON object never starts with a single quote: go straight to the literal parser.
        return parse_python_literal(stripped)
    return parse_json_object(text)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()  # what get_path returns for an absent field (None is a present null)


def get_path(record: Any, path: str) -> Any:
    """``record["a"]["b"]`` for ``path`` ``"a.b"``; a key that itself contains dots is tried first."""
    if isinstance(record, dict) and path in record:
        return record[path]
    node = record
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


class FieldProblem(NamedTuple):
    reason: str
    detail: dict[str, Any]


def text_field(record: dict[str, Any], path: str, max_chars: int, *,
               clean: Callable[[str], str] | None = None) -> tuple[str | None, FieldProblem | None]:
    """A required text field: present, a string, not blank, within the size bound, without NUL."""
    value = get_path(record, path)
    if value is MISSING or value is None:
        return None, FieldProblem("missing_field", {"field": path})
    if not isinstance(value, str):
        return None, FieldProblem("bad_field_type", {"field": path, "type": type(value).__name__})
    return check_text(value, path, max_chars, clean=clean)


def check_text(value: str, name: str, max_chars: int, *,
               clean: Callable[[str], str] | None = None) -> tuple[str | None, FieldProblem | None]:
    if len(value) > max_chars:
        return None, FieldProblem("oversized_field", {"field": name, "chars": len(value), "limit": max_chars})
    if "\x00" in value:
        return None, FieldProblem("nul_byte", {"field": name})
    if clean is not None:
        value = clean(value)
    if not value.strip():
        return None, FieldProblem("empty_text", {"field": name})
    return value, None


def has_surrogates(text: str) -> bool:
    """True when text decoded with surrogateescape held invalid UTF-8 bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def skip_file(name: str, patterns: Iterable[str]) -> bool:
    """Whether a documentation file (README, licence, class list) should be left out of the inputs."""
    base = name.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(base, pattern.lower()) for pattern in patterns)


# --------------------------------------------------------------------------------------------------------------
# Outcomes: what a parser returns for one row. Plain tuples keep parsers testable without Beam.

PAIR = "pair"
REJECT = "reject"
Outcome = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class FileUnit:
    """One unit of reading work: a file or a byte range of one, with what the source decided about it."""

    uri: str
    name: str
    fmt: str
    dataset: str
    license: str
    compression: str = "none"
    start: int = 0
    end: int | None = None
    index: int = 0
    ranges: int = 1
    # Source-specific settings decided when planning (CSV delimiter and header, first row of a row group, ...).
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def provenance(self, record: str, **extra: Any) -> dict[str, Any]:
        provenance = {"record": record, "input": self.name, "license": self.license}
        provenance.update({key: value for key, value in extra.items() if value is not None})
        return provenance


@dataclass
class Emitter:
    """Builds the outcomes for rows of one unit (pairs, read rejects), honouring the reject policy."""

    unit: FileUnit
    source: str
    policy: RejectPolicy

    def pair(self, *, query: str, document: str, record: str, ref: str | None = None, dataset: str | None = None,
             **extra: Any) -> Outcome:
        """A pair. ``ref`` (default: input name and record) makes the id unique per input row."""
        provenance = self.unit.provenance(record, **extra)
        pair = new_pair(dataset=dataset or self.unit.dataset, source=self.source, query=query, document=document,
                        provenance=provenance, record_ref=ref or f"{self.unit.name}:{record}")
        return PAIR, pair

    def filtered(self, pair_outcome: Outcome, reason: str, detail: dict[str, Any] | None = None) -> Outcome:
        """A row that parsed into a pair but is left out by design (not a duplicate, boilerplate title)."""
        return REJECT, make_reject(pair_outcome[1], stage=STAGE, reason=reason, detail=detail,
                                   policy=self.policy)

    def reject(self, reason: str, *, record: str, detail: dict[str, Any] | None = None, raw: str | None = None,
               dataset: str | None = None, **extra: Any) -> Outcome:
        provenance = self.unit.provenance(record, **extra)
        return REJECT, make_input_reject(dataset=dataset or self.unit.dataset, source=self.source,
                                         provenance=provenance, reason=reason, detail=detail,
                                         raw=raw, policy=self.policy)

    def raw_line_reject(self, raw: RawLine, reason: str, detail: dict[str, Any] | None = None) -> Outcome:
        return self.reject(reason, record=f"{self.unit.name}:{raw.line}", detail=detail,
                           raw=raw_preview(raw.data) if raw.data else None)


class EmitOutcomes(beam.DoFn):
    """Shared by the read DoFns: routes outcomes to the main (pairs) and ``rejects`` outputs, and counts."""

    def __init__(self, source: str):
        self.source = source
        self.rows_counter = Metrics.counter(STAGE, "rows")
        self.metrics = StageMetrics(STAGE)

    def emit(self, outcomes: Iterable[Outcome]):
        for kind, record in outcomes:
            if kind == PAIR:
                self.metrics.passed()
                yield record
            else:
                self.metrics.dropped(record["reason"])
                yield beam.pvalue.TaggedOutput(REJECT, record)


def split_result(pcoll_with_outputs) -> dict[str, Any]:
    return {"pairs": pcoll_with_outputs[PAIR], "rejects": pcoll_with_outputs[REJECT]}


def split_outcomes(outcomes: Iterable[Outcome]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pairs, rejects) from outcomes, e.g. a read transform's ``run_local()``."""
    pairs, rejects = [], []
    for kind, record in outcomes:
        (pairs if kind == PAIR else rejects).append(record)
    return pairs, rejects


# --------------------------------------------------------------------------------------------------------------
# Planning.

_UNITS_PER_PACK = 2000


def _unpack_units(pack: bytes) -> list[FileUnit]:
    return pickle.loads(zlib.decompress(pack))


class CreateUnits(beam.PTransform):
    """The work units as a PCollection. Hundreds of thousands of one-article files (XSum, CNN/DailyMail) would
    make a job graph larger than Dataflow accepts, so large lists travel as compressed packs of units that are
    unpacked and redistributed inside the pipeline."""

    def __init__(self, units: list[FileUnit]):
        super().__init__()
        self.units = list(units)

    def expand(self, root):
        if len(self.units) <= _UNITS_PER_PACK:
            return root | "Create" >> beam.Create(self.units)
        packs = [zlib.compress(pickle.dumps(self.units[start:start + _UNITS_PER_PACK]), 6)
                 for start in range(0, len(self.units), _UNITS_PER_PACK)]
        return (root
                | "CreatePacks" >> beam.Create(packs)
                | "Unpack" >> beam.FlatMap(_unpack_units)
                | "Spread" >> beam.Reshuffle())


def plan_line_units(unit: FileUnit, size: int, split_bytes: int) -> list[FileUnit]:
    """A plain file larger than split_bytes -> several byte ranges; anything else stays whole."""
    if unit.compression != "none" or size <= split_bytes:
        return [unit]
    count = -(-size // split_bytes)
    return [replace(unit, start=index * split_bytes, end=min((index + 1) * split_bytes, size), index=index,
                    ranges=count) for index in range(count)]


# --------------------------------------------------------------------------------------------------------------
# Line-based reading (JSON lines, Python-literal lines).

LineParser = Callable[[str, RawLine, Emitter], Iterable[Outcome]]


class _CountRangeLines(beam.DoFn):
    def process(self, unit: FileUnit):
        yield (unit.uri, unit.index), count_line_starts(unit.uri, unit.start, unit.end)


class _ReadLinesFn(EmitOutcomes):
    def __init__(self, source: str, parse: LineParser, max_line_bytes: int, policy: RejectPolicy):
        super().__init__(source)
        self.parse = parse
        self.max_line_bytes = max_line_bytes
        self.policy = policy

    def process(self, unit: FileUnit, range_counts):
        first_line = 1 + sum(range_counts[(unit.uri, index)] for index in range(unit.index))
        yield from self.emit(read_line_unit(unit, self.source, self.parse, first_line=first_line,
                                            max_line_bytes=self.max_line_bytes, policy=self.policy,
                                            rows_counter=self.rows_counter))


def read_line_unit(unit: FileUnit, source: str, parse: LineParser, *, first_line: int = 1,
                   max_line_bytes: int = 4 * MiB, policy: RejectPolicy, rows_counter=None) -> Iterator[Outcome]:
    """Outcomes of one line-based unit: blank lines are not rows; every other line gives one outcome."""
    emitter = Emitter(unit, source, policy)
    for raw in iter_lines(unit.uri, compression=unit.compression, start=unit.start, end=unit.end,
                          first_line=first_line, max_line_bytes=max_line_bytes):
        if raw.problem is not None:
            yield emitter.raw_line_reject(raw, raw.problem, raw.detail)
            continue
        if not raw.data.strip():
            continue
        if rows_counter is not None:
            rows_counter.inc()
        text, reason, detail = decode_line(raw.data)
        if text is None:
            yield emitter.raw_line_reject(raw, reason, detail)
            continue
        yield from parse(text, raw, emitter)


class ReadLines(beam.PTransform):
    """Line-based units -> {"pairs", "rejects"}; ranges of split files are numbered exactly (see module doc)."""

    def __init__(self, units: list[FileUnit], source: str, parse: LineParser, *, max_line_bytes: int,
                 policy: RejectPolicy):
        super().__init__()
        self.units = units
        self.source = source
        self.parse = parse
        self.max_line_bytes = max_line_bytes
        self.policy = policy

    def expand(self, root):
        split = [unit for unit in self.units if unit.ranges > 1 and unit.index < unit.ranges - 1]
        counts = (root
                  | "SplitRanges" >> CreateUnits(split)
                  | "CountLines" >> beam.ParDo(_CountRangeLines()))
        read = (root
                | "Units" >> CreateUnits(self.units)
                | "ReadLines" >> beam.ParDo(_ReadLinesFn(self.source, self.parse, self.max_line_bytes,
                                                         self.policy),
                                            beam.pvalue.AsDict(counts)).with_outputs(REJECT, main=PAIR))
        return split_result(read)

    def run_local(self) -> Iterator[Outcome]:
        """The same outcomes in this process, unit by unit, without Beam (tests, debugging)."""
        counts: dict[tuple[str, int], int] = {}
        for unit in self.units:
            if unit.ranges > 1:
                counts[(unit.uri, unit.index)] = count_line_starts(unit.uri, unit.start, unit.end)
        for unit in self.units:
            first_line = 1 + sum(counts[(unit.uri, index)] for index in range(unit.index))
            yield from read_line_unit(unit, self.source, self.parse, first_line=first_line,
                                      max_line_bytes=self.max_line_bytes, policy=self.policy)


# --------------------------------------------------------------------------------------------------------------
# CSV / TSV.

@dataclass(frozen=True)
class CsvRow:
    fields: list[str]
    first_line: int
    last_line: int
    raw: str

    @property
    def lines(self) -> str:
        return str(self.first_line) if self.first_line == self.last_line else f"{self.first_line}-{self.last_line}"


CsvParser = Callable[[CsvRow, Emitter], Iterable[Outcome]]


class _RecordTooLong(PairCurationError):
    """Raised inside the CSV feed: the record being parsed has grown past max_line_bytes."""


def read_csv_unit(unit: FileUnit, source: str, parse: CsvParser, *, delimiter: str = ",", skip_header: bool = False,
                  max_line_bytes: int = 4 * MiB, max_field_chars: int = 200_000,
                  policy: RejectPolicy, rows_counter=None) -> Iterator[Outcome]:
    """The records of a CSV/TSV file (quoted fields, ``""`` escapes, newlines inside quotes) -> outcomes.

    Bad physical lines (oversized, truncated stream) become rejects and are not fed to the CSV parser; a record
    with invalid UTF-8 or a NUL byte, or one the CSV parser refuses, is rejected with its line numbers.
    """
    emitter = Emitter(unit, source, policy)
    problems: list[RawLine] = []
    fed_lines: deque[int] = deque()  # physical line numbers of the lines fed and not yet consumed
    record_bytes = [0]  # bytes of those lines (one record: the csv module never reads ahead)
    held: list[RawLine] = []  # the line that would have made a record too long: it starts the next one
    lines = iter_lines(unit.uri, compression=unit.compression, max_line_bytes=max_line_bytes)

    def feed(source_lines: Iterable[RawLine]) -> Iterator[str]:
        for raw in source_lines:
            if raw.problem is not None:
                problems.append(raw)
                continue
            data = raw.data[:-1] if raw.data.endswith(b"\r") else raw.data
            if raw.line == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            if fed_lines and record_bytes[0] + len(data) + 1 > max_line_bytes:
                # Many small quoted fields with newlines escape the field bound: bound the record too.
                held.append(raw)
                raise _RecordTooLong
            fed_lines.append(raw.line)
            record_bytes[0] += len(data) + 1
            yield data.decode("utf-8", "surrogateescape") + "\n"

    def new_reader(source_lines: Iterable[RawLine]):
        return csv.reader(feed(source_lines), delimiter=delimiter, quotechar='"', doublequote=True, strict=False)

    # The csv module bounds each field (a runaway quote must not swallow the file into memory).
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(max_field_chars)
    try:
        reader = new_reader(lines)
        consumed = 0
        header_pending = skip_header
        while True:
            try:
                fields = next(reader)
                error = None
            except StopIteration:
                break
            except csv.Error as exc:
                fields, error = None, str(exc)
            except _RecordTooLong:
                # The lines read so far leave as one reject; parsing starts afresh at the held line.
                first, last = fed_lines[0], fed_lines[-1]
                detail = {"bytes": record_bytes[0], "limit": max_line_bytes, "lines": [first, last],
                          "error": "a quoted record runs past the limit"}
                fed_lines.clear()
                record_bytes[0] = 0
                restart = list(held)
                held.clear()
                reader, consumed, header_pending = new_reader(itertools.chain(restart, lines)), 0, False
                if rows_counter is not None:
                    rows_counter.inc()
                yield emitter.reject("oversized_line", record=f"{unit.name}:{first}", detail=detail)
                continue
            taken = reader.line_num - consumed
            consumed = reader.line_num
            line_numbers = [fed_lines.popleft() for _ in range(min(taken, len(fed_lines)))]
            record_bytes[0] = 0
            for problem in problems:
                yield emitter.raw_line_reject(problem, problem.problem, problem.detail)
            problems.clear()
            if not line_numbers:
                continue
            first, last = line_numbers[0], line_numbers[-1]
            if header_pending:
                header_pending = False
                continue
            if fields == []:
                continue  # a blank line is not a record (a line of empty fields is: it leaves as a reject)
            if rows_counter is not None:
                rows_counter.inc()
            if error is not None:
                reason = "oversized_field" if "field larger than field limit" in error else "malformed_line"
                yield emitter.reject(reason, record=f"{unit.name}:{first}", detail={"error": error,
                                                                                    "lines": [first, last]})
                continue
            joined = delimiter.join(fields)
            if has_surrogates(joined):
                yield emitter.reject("invalid_utf8", record=f"{unit.name}:{first}", detail={"lines": [first, last]},
                                     raw=joined.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                continue
            if "\x00" in joined:
                yield emitter.reject("nul_byte", record=f"{unit.name}:{first}", detail={"lines": [first, last]},
                                     raw=joined.replace("\x00", "\ufffd"))
                continue
            yield from parse(CsvRow(fields, first, last, joined), emitter)
        for problem in problems:
            yield emitter.raw_line_reject(problem, problem.problem, problem.detail)
    finally:
        csv.field_size_limit(previous_limit)


class _ReadCsvFn(EmitOutcomes):
    def __init__(self, source: str, parse: CsvParser, max_line_bytes: int, max_field_chars: int, policy: RejectPolicy):
        super().__init__(source)
        self.parse = parse
        self.max_line_bytes = max_line_bytes
        self.max_field_chars = max_field_chars
        self.policy = policy

    def process(self, unit: FileUnit):
        yield from self.emit(read_csv_unit(
            unit, self.source, self.parse, delimiter=unit.option("delimiter", ","),
            skip_header=unit.option("header", False), max_line_bytes=self.max_line_bytes,
            max_field_chars=self.max_field_chars, policy=self.policy, rows_counter=self.rows_counter))


class ReadCsv(beam.PTransform):
    """CSV/TSV files -> {"pairs", "rejects"}. Quoted fields may hold newlines, so a file is read whole."""

    def __init__(self, units: list[FileUnit], source: str, parse: CsvParser, *, max_line_bytes: int,
                 max_field_chars: int, policy: RejectPolicy):
        super().__init__()
        self.units = units
        self.source = source
        self.parse = parse
        self.max_line_bytes = max_line_bytes
        self.max_field_chars = max_field_chars
        self.policy = policy

    def expand(self, root):
        read = (root
                | "Units" >> CreateUnits(self.units)
                | "ReadCsv" >> beam.ParDo(_ReadCsvFn(self.source, self.parse, self.max_line_bytes,
                                                     self.max_field_chars, self.policy)
                                          ).with_outputs(REJECT, main=PAIR))
        return split_result(read)

    def run_local(self) -> Iterator[Outcome]:
        """The same outcomes in this process, without Beam (tests, debugging)."""
        for unit in self.units:
            yield from read_csv_unit(unit, self.source, self.parse, delimiter=unit.option("delimiter", ","),
                                     skip_header=unit.option("header", False), max_line_bytes=self.max_line_bytes,
                                     max_field_chars=self.max_field_chars, policy=self.policy)


# --------------------------------------------------------------------------------------------------------------
# Whole files (one article per file: XSum, BBC, CNN/DailyMail).

FileParser = Callable[[str, Emitter], Iterable[Outcome]]


def read_whole_unit(unit: FileUnit, source: str, parse: FileParser, *, max_file_bytes: int,
                    policy: RejectPolicy, fallback_encoding: str | None = None) -> Iterator[Outcome]:
    emitter = Emitter(unit, source, policy)
    handle = open_raw(unit.uri)
    compression = unit.compression
    if compression == "none":  # not sniffed when planning (there may be 300,000 such files): look here
        compression = "gzip" if handle.read(2) == _GZIP_MAGIC else "none"
        handle.seek(0)
    stream = ChunkStream(handle, compression)
    data = bytearray()
    oversized = False
    try:
        for chunk in stream:
            data += chunk
            if len(data) > max_file_bytes:
                oversized = True
                break
    finally:
        stream.close()
    if oversized:
        yield emitter.reject("oversized_file", record=unit.name, detail={"limit": max_file_bytes},
                             raw=raw_preview(bytes(data)))
        return
    if stream.problem is not None:
        reason, detail = stream.problem
        yield emitter.reject(reason, record=unit.name, detail=detail, raw=raw_preview(bytes(data)))
        return
    raw = bytes(data)
    if b"\x00" in raw:
        yield emitter.reject("nul_byte", record=unit.name, detail={"byte": raw.find(b"\x00")},
                             raw=raw_preview(raw))
        return
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if fallback_encoding is None:
            yield emitter.reject("invalid_utf8", record=unit.name, detail={"error": f"invalid UTF-8 at byte "
                                                                                    f"{exc.start}"},
                                 raw=raw_preview(raw))
            return
        text = raw.decode(fallback_encoding, "replace")
    yield from parse(text.replace("\r\n", "\n"), emitter)


class _ReadWholeFn(EmitOutcomes):
    def __init__(self, source: str, parse: FileParser, max_file_bytes: int, policy: RejectPolicy,
                 fallback_encoding: str | None):
        super().__init__(source)
        self.parse = parse
        self.max_file_bytes = max_file_bytes
        self.policy = policy
        self.fallback_encoding = fallback_encoding

    def process(self, unit: FileUnit):
        self.rows_counter.inc()
        yield from self.emit(read_whole_unit(unit, self.source, self.parse, max_file_bytes=self.max_file_bytes,
                                             policy=self.policy, fallback_encoding=self.fallback_encoding))


class ReadWholeFiles(beam.PTransform):
    """One record per file -> {"pairs", "rejects"}."""

    def __init__(self, units: list[FileUnit], source: str, parse: FileParser, *, max_file_bytes: int,
                 policy: RejectPolicy, fallback_encoding: str | None = None):
        super().__init__()
        self.units = units
        self.source = source
        self.parse = parse
        self.max_file_bytes = max_file_bytes
        self.policy = policy
        self.fallback_encoding = fallback_encoding

    def expand(self, root):
        read = (root
                | "Units" >> CreateUnits(self.units)
                | "ReadFiles" >> beam.ParDo(_ReadWholeFn(self.source, self.parse, self.max_file_bytes,
                                                         self.policy, self.fallback_encoding)
                                            ).with_outputs(REJECT, main=PAIR))
        return split_result(read)

    def run_local(self) -> Iterator[Outcome]:
        """The same outcomes in this process, without Beam (tests, debugging)."""
        for unit in self.units:
            yield from read_whole_unit(unit, self.source, self.parse, max_file_bytes=self.max_file_bytes,
                                       policy=self.policy, fallback_encoding=self.fallback_encoding)


# --------------------------------------------------------------------------------------------------------------
# Several readers in one source (news mixes CSV, whole files and JSON lines).

class Combine(beam.PTransform):
    """Applies several read transforms to the root and flattens their pairs and rejects."""

    def __init__(self, parts: list[tuple[str, beam.PTransform]]):
        super().__init__()
        self.parts = parts

    def expand(self, root):
        pairs, rejects = [], []
        for label, transform in self.parts:
            result = root | label >> transform
            pairs.append(result["pairs"])
            rejects.append(result["rejects"])
        if not pairs:
            empty = root | "Nothing" >> beam.Create([])
            return {"pairs": empty, "rejects": root | "NoRejects" >> beam.Create([])}
        return {"pairs": pairs | "FlattenPairs" >> beam.Flatten(),
                "rejects": rejects | "FlattenRejects" >> beam.Flatten()}

    def run_local(self) -> Iterator[Outcome]:
        for _label, transform in self.parts:
            yield from transform.run_local()


def combine(parts: list[tuple[str, beam.PTransform]]) -> beam.PTransform:
    return parts[0][1] if len(parts) == 1 else Combine(parts)


def note_skipped(context, skipped: list[str]) -> None:
    """Records the left-out documentation files on the run context (for the manifest) and in the log."""
    if not skipped:
        return
    log.info("not read (documentation files): %s", ", ".join(skipped))
    if context is not None:
        context.extra.setdefault("skipped_inputs", []).extend(skipped)


def require_inputs(inputs: list[InputFile], source: str) -> None:
    if not inputs:
        raise InputError(f"--source {source}: no input files")


def inputs_from_urls(source_name: str):
    """A source's ``default_inputs``: download (and unpack) ``source.urls`` into the cache, or say what to do."""

    def default_inputs(source_config, download_config) -> list[str]:
        from sources.download import fetch_inputs

        if not source_config.urls:
            raise InputError(f"--source {source_name}: no --input given and source.urls is empty; pass --input PATH")
        return fetch_inputs(source_config.urls, download_config)

    return default_inputs
