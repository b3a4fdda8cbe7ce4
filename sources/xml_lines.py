"""Line-based reading of one-row-per-line XML dumps (StackExchange Posts.xml, PostLinks.xml) that stays faithful
to XML where lines alone would not be.

Markup state across lines
    A ``<!-- ... -->`` comment, ``<![CDATA[ ... ]]>`` section or ``<? ... ?>`` processing instruction can span
    lines, and a ``<row>`` inside one is not a row. :func:`scan_line` tracks that state line by line (tags and
    quoted attribute values are line-local: a dump row never spans lines, so one malformed row cannot shift the
    state of the rest of the file). Every line that starts or ends inside such a region is not parsed: the
    region becomes one reject with its kind, line range and count.

Byte-range splits agree with whole-file reads
    A range must know the state at its first line. A cheap pre-scan (:func:`scan_range`) gives, per range, its
    line count and its *transfer* (the state at its end for each state at its start): when the range holds no
    marker at all (``<!--``, ``<![CDATA[``, ``<?``, ``-->``, ``]]>``, ``?>``: the usual case, found with a
    C-speed ``bytes.find``) the transfer is the identity; only otherwise are its lines scanned. Composing the
    transfers of the ranges before gives each range its starting state and first line number.

Runs of unparseable lines
    Lines that are not rows (neither ``<row``, a header line nor blank) and region lines leave as *pieces*
    (reason, first line, last line, count). Pieces are cut at every :data:`BLOCK_LINES`-th line and merged per
    block after the read, so a run gives the same rejects whatever the split size: one reject per run (per
    block), not one per line.

Encodings
    The line reader works on UTF-8 bytes. A UTF-16 or UTF-32 file (byte-order mark, or the NUL pattern of an
    ASCII ``<`` in those encodings) is refused with one line naming the file (:func:`refuse_wide_encoding`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import apache_beam as beam

from sources.base import InputError
from sources.readers import RawLine, decompressed_head, iter_lines, open_raw

TEXT, COMMENT, CDATA, PI = "text", "comment", "cdata", "pi"
STATES = (TEXT, COMMENT, CDATA, PI)
_OPENERS = ((b"<!--", COMMENT), (b"<![CDATA[", CDATA), (b"<?", PI))
_CLOSERS = {COMMENT: b"-->", CDATA: b"]]>", PI: b"?>"}
_MARKERS = (b"<!--", b"<![CDATA[", b"<?", b"-->", b"]]>", b"?>")
REGION_REASONS = {COMMENT: "inside_xml_comment", CDATA: "inside_cdata_section", PI: "inside_processing_instruction"}
UNEXPECTED = "unexpected_line"
BLOCK_LINES = 100_000
_CHUNK = 1 << 20

_HEADER_LINE = re.compile(rb"^\s*(<\?xml[^>]*\?>|</?posts>|</?postlinks>)?\s*$", re.IGNORECASE)


_TAG_STOP = re.compile(rb"[\"'>]")


def scan_line(data: bytes, state: str) -> str:
    """The markup state after ``data`` (one line) when it starts in ``state``. Jumps with find/search (C speed):
    a hostile line full of markup costs its length, not a Python loop per byte."""
    position, size = 0, len(data)
    while position < size:
        if state != TEXT:
            close = data.find(_CLOSERS[state], position)
            if close < 0:
                return state
            position = close + len(_CLOSERS[state])
            state = TEXT
            continue
        start = data.find(b"<", position)
        if start < 0:
            return TEXT
        for opener, kind in _OPENERS:
            if data.startswith(opener, start):
                state = kind
                position = start + len(opener)
                break
        else:
            # A tag: its quoted attribute values may hold anything; it ends at the first ">" outside them (or,
            # malformed, with the line).
            position = start + 1
            while True:
                stop = _TAG_STOP.search(data, position)
                if stop is None:
                    return TEXT
                if data[stop.start()] == 0x3E:  # >
                    position = stop.start() + 1
                    break
                close = data.find(data[stop.start():stop.start() + 1], stop.start() + 1)
                if close < 0:
                    return TEXT
                position = close + 1
    return state


def _scan_line_fast(data: bytes, state: str) -> str:
    # Lines without any marker cannot change the state: skip the scan.
    if not _may_hold_marker(data):
        return state
    return scan_line(data, state)


@dataclass(frozen=True)
class RangeScan:
    """What a byte range tells the ranges after it: how many lines start in it, and its state transfer."""

    lines: int
    transfer: tuple[tuple[str, str], ...]  # (state at start, state at end) for every state

    def after(self, state: str) -> str:
        return dict(self.transfer)[state]


_IDENTITY = tuple((state, state) for state in STATES)


# Supersets of the markers that sre finds at memchr speed (a literal first byte): "<!" or "<?" opens, and a
# ">" after "-", "]" or "?" closes. A false alarm ("->" in text) only costs the line scan of its range.
_OPENER_HINT = re.compile(rb"<[!?]")
_CLOSER_HINT = re.compile(rb">(?<=[-\]?]>)")


def _may_hold_marker(data: bytes) -> bool:
    return bool(_OPENER_HINT.search(data) or _CLOSER_HINT.search(data))


def _count_lines_and_find_markers(uri: str, start: int, end: int) -> tuple[int, bool]:
    """One read of a range: how many lines start in [start, end) (as readers.count_line_starts), and whether a
    marker may occur in the lines it owns (read through the end of the last one; conservative: a marker near
    them only costs the line scan)."""
    count = 1 if start == 0 else 0
    scan_from = max(start - 1, 0)
    overlap = max(len(marker) for marker in _MARKERS) - 1
    found, tail = False, b""
    with open_raw(uri) as handle:
        handle.seek(scan_from)
        position = scan_from
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            chunk_start, position = position, position + len(chunk)
            if chunk_start < end - 1:  # newlines in [start - 1, end - 1) start lines in the range
                count += chunk.count(b"\n", 0, min(len(chunk), end - 1 - chunk_start))
            if not found:  # the chunk, and the seam with the previous one (no copy of the chunk)
                found = _may_hold_marker(chunk) or _may_hold_marker(tail + chunk[:overlap])
                tail = chunk[-overlap:]
            if position > end - 1 and chunk.find(b"\n", max(end - 1 - chunk_start, 0)) >= 0:
                break
    return count, found


def scan_range(uri: str, start: int, end: int, max_line_bytes: int) -> RangeScan:
    lines, has_markers = _count_lines_and_find_markers(uri, start, end)
    if not has_markers:
        return RangeScan(lines, _IDENTITY)
    states = {state: state for state in STATES}
    for raw in iter_lines(uri, start=start, end=end, max_line_bytes=max_line_bytes):
        if raw.problem not in (None, "oversized_line"):
            continue
        for begin in STATES:
            states[begin] = _scan_line_fast(raw.data, states[begin])
    return RangeScan(lines, tuple((state, states[state]) for state in STATES))


def start_of(index: int, scans: dict[int, RangeScan]) -> tuple[str, int]:
    """The state and line number at the start of range ``index`` from the scans of the ranges before it."""
    state, line = TEXT, 1
    for before in range(index):
        scan = scans[before]
        state = scan.after(state)
        line += scan.lines
    return state, line


def is_row_or_header(data: bytes) -> bool:
    data = data.removeprefix(b"\xef\xbb\xbf")
    stripped = data.lstrip()
    return stripped.startswith(b"<row") or bool(_HEADER_LINE.match(data))


class Piece(dict):
    """Part of a run of lines that are not rows: {"uri", "reason", "first", "last", "count", "raw"}."""


def classify_lines(uri: str, lines: Iterable[RawLine], state: str) -> Iterator[RawLine | Piece]:
    """Row lines (and lines with a read problem) pass through; region lines and other non-row lines come back
    as pieces of runs, cut at block boundaries."""
    piece: Piece | None = None
    for raw in lines:
        before = state
        reason = None
        if raw.problem is None or raw.problem == "oversized_line":
            state = _scan_line_fast(raw.data, state)
            if before != TEXT or state != TEXT:
                reason = REGION_REASONS[before if before != TEXT else state]
            elif raw.problem is None and not is_row_or_header(raw.data):
                reason = UNEXPECTED
        if piece is not None and (reason != piece["reason"] or raw.line != piece["last"] + 1
                                  or raw.line % BLOCK_LINES == 0):
            yield piece
            piece = None
        if reason is None:
            yield raw
            continue
        if piece is None:
            piece = Piece(uri=uri, reason=reason, first=raw.line, last=raw.line, count=0, raw=raw.data[:200])
        piece["last"] = raw.line
        piece["count"] += 1
    if piece is not None:
        yield piece


def _block_key(piece: Piece) -> tuple[str, str, int]:
    return piece["uri"], piece["reason"], piece["first"] // BLOCK_LINES


def merge_pieces(pieces: Iterable[Piece]) -> list[Piece]:
    """Adjacent pieces of one run (split by a range boundary) -> one piece each."""
    merged: list[Piece] = []
    for piece in sorted(pieces, key=lambda p: p["first"]):
        if merged and merged[-1]["last"] + 1 == piece["first"]:
            merged[-1] = Piece(merged[-1], last=piece["last"], count=merged[-1]["count"] + piece["count"])
        else:
            merged.append(Piece(piece))
    return merged


def piece_problem(piece: Piece) -> tuple[str, bytes, dict[str, Any]]:
    """A merged piece -> the (uri, raw prefix, problem) element the row parser turns into one reject."""
    return piece["uri"], piece["raw"], {
        "reason": piece["reason"],
        "detail": {"first_line": piece["first"], "last_line": piece["last"], "lines": piece["count"]}}


class MergeRuns(beam.PTransform):
    """Pieces from every range and archive -> one (uri, raw, problem) element per run (per block)."""

    def expand(self, pieces):
        return (pieces
                | "KeyByBlock" >> beam.Map(lambda piece: (_block_key(piece), piece))
                | "GroupBlocks" >> beam.GroupByKey()
                | "Merge" >> beam.FlatMap(lambda item: [piece_problem(p) for p in merge_pieces(item[1])]))


# -- encodings ----------------------------------------------------------------------------------------------------

_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
              (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE"))
_WIDE_PATTERNS = ((b"<\x00\x00\x00", "UTF-32LE"), (b"\x00\x00\x00<", "UTF-32BE"),
                  (b"<\x00?\x00", "UTF-16LE"), (b"\x00<\x00?", "UTF-16BE"),
                  (b"<\x00r\x00", "UTF-16LE"), (b"\x00<\x00r", "UTF-16BE"))


def wide_encoding(head: bytes) -> str | None:
    """"UTF-16LE" etc. when the first bytes of an XML file say it is not UTF-8 (BOM or NUL pattern)."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return name
    for pattern, name in _WIDE_PATTERNS:
        if head.startswith(pattern):
            return name
    return None


def refuse_wide_encoding(uri: str, head: bytes | None = None) -> None:
    """InputError (one line) for a UTF-16/32 dump: the line reader reads UTF-8 only."""
    if head is None:
        head, _ = decompressed_head(uri, 4)
    encoding = wide_encoding(head)
    if encoding:
        raise InputError(f"{uri} is {encoding}-encoded XML: convert it to UTF-8 first "
                         f"(iconv -f {encoding} -t UTF-8) and update its encoding declaration")
