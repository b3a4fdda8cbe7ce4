"""StackExchange data dumps -> title/body, question/answer and duplicate-question pairs.

Input: a site folder (``Posts.xml``, optional ``PostLinks.xml``), a site ``.7z`` as distributed, or several
sites by glob. ``Posts.xml`` holds one ``<row .../>`` per line, so folders are read with Beam's splittable
text read and each line is parsed on its own by defusedxml: a row can reference no DTD, so entity bombs and
external entities fail to parse (and become rejects) instead of expanding. Questions meet their answers and
duplicate links through keyed joins, never through a dict held by one worker.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterable, Iterator
from xml.etree.ElementTree import ParseError

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as parse_xml_row
from pydantic import Field

from pipelines.core.progress import Progress, is_quiet
from pipelines.core.records import RejectPolicy, make_input_reject, new_pair
from sources.base import InputFile, RunContext, Source, SourceSection, decode_text
from sources.readers import CreateUnits, FileUnit, compression_of, iter_lines, plan_line_units
from sources import stackexchange_rows as row_outcomes
from sources.stackexchange_layout import LINKS, POSTS as POSTS_TABLE, DumpFile, missing_links_warnings, plan_dump
from sources.text import html_to_text, parse_tags, plain_text
from sources.xml_lines import (TEXT, MergeRuns, Piece, classify_lines, piece_problem, refuse_wide_encoding,
                               scan_range, start_of)

SOURCE_NAME = "stackexchange"
TITLE_BODY = "stackexchange_title_body"
QUESTION_ANSWER = "stackexchange_question_answer"
DUPLICATES = "stackexchange_duplicates"
POSTS = "stackexchange_posts"  # rejects of dump rows that could not be read (malformed, unreadable archives)

QUESTION, ANSWER = "1", "2"
DUPLICATE_LINK = "3"


class StackExchangeSourceConfig(SourceSection):
    # Which pair kinds (DATASETs) to build.
    title_body: bool = True
    question_answer: bool = True
    duplicates: bool = True
    # question_answer takes the accepted answer; without one (or when it is absent from the dump), the
    # highest-scored answer whose score is at least this.
    min_answer_score: int = 1
    # Whether an accepted answer must also reach min_answer_score.
    accepted_answer_min_score: int | None = None
    # What each side of a duplicate pair holds: the title, or the title and body.
    duplicate_text: str = Field("title", pattern="^(title|title_body)$")
    # Rows longer than this (bytes, escaped XML) are rejected unparsed: bounds memory per row.
    max_row_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Plain Posts.xml files larger than this are read as byte ranges in parallel (rows never straddle: a row
    # belongs to the range holding its first byte).
    split_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # The site of every input when its folder or archive is not named after one (a dump unpacked into
    # "data/"): it names provenance and the CC BY-SA links (https://SITE/q/ID). null: from the names.
    site: str | None = None
    # Sites to download when --input is absent, and where from ({site} is replaced). Empty (the default): the
    # sample bundled with the project is built instead, with no network.
    sites: list[str] = Field(default_factory=list)
    url_template: str = "https://archive.org/download/stackexchange/{site}.7z"


# --- licence ---------------------------------------------------------------------------------------------

def license_for(content_license: str | None, creation_date: str | None) -> str:
    """The row's ContentLicense, or the CC BY-SA version in force when the post was created (older dumps)."""
    if content_license:
        return content_license
    date = (creation_date or "")[:10]
    if date and date < "2011-04-08":
        return "CC BY-SA 2.5"
    if date and date < "2018-05-02":
        return "CC BY-SA 3.0"
    return "CC BY-SA 4.0"


def combine_licenses(*licenses: str) -> str:
    return " AND ".join(sorted(set(licenses)))


# --- rows ------------------------------------------------------------------------------------------------

_SKIPPED_LINE = re.compile(r"^\s*(<\?xml[^>]*\?>|</?posts>|</?postlinks>)?\s*$")


def site_of(input_name: str) -> str:
    """The site a Posts.xml belongs to: its folder ("cardano.stackexchange.com/Posts.xml") or its archive
    ("cardano.stackexchange.com.7z", "stackoverflow.com-Posts.7z")."""
    parts = input_name.replace("\\", "/").split("/")
    if len(parts) >= 2 and not parts[-2].endswith(".7z"):
        return parts[-2]
    archive = parts[-2] if len(parts) >= 2 else parts[-1]
    archive = re.sub(r"\.7z$", "", archive)
    return re.sub(r"-(Posts|PostLinks)$", "", archive)


def parse_row(line: str, max_row_bytes: int) -> tuple[dict[str, str] | None, str | None]:
    """One line of a dump file -> (attributes, None), (None, reason) or (None, None) for header lines."""
    if len(line) > max_row_bytes:
        return None, "row_too_large"
    stripped = line.strip()
    if not stripped.startswith("<row"):
        return (None, None) if _SKIPPED_LINE.match(stripped) else (None, "unexpected_line")
    if "\x00" in stripped:
        return None, "nul_byte"
    try:
        element = parse_xml_row(stripped, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        return None, "forbidden_xml"
    except ParseError as exc:
        # An undefined entity (a bomb or external entity without its DTD) lands here: never expanded.
        return None, "undefined_entity" if "undefined entity" in str(exc) else "malformed_xml_row"
    if element.tag != "row":
        return None, "malformed_xml_row"
    return dict(element.attrib), None


def post_from_row(attributes: dict[str, str], site: str, input_name: str) -> dict[str, Any]:
    post_type = attributes.get("PostTypeId", "")
    post_id = attributes.get("Id", "")
    return {
        "site": site,
        "input": input_name,
        "id": post_id,
        "type": post_type,
        "parent_id": attributes.get("ParentId"),
        "accepted_answer_id": attributes.get("AcceptedAnswerId"),
        "score": _to_int(attributes.get("Score")),
        "title": plain_text(attributes.get("Title", "")),
        "body": html_to_text(attributes.get("Body", "")),
        "tags": parse_tags(attributes.get("Tags")),
        "license": license_for(attributes.get("ContentLicense"), attributes.get("CreationDate")),
    }


def _to_int(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def post_ref(post: dict[str, Any]) -> str:
    return f"{post['site']}/posts/{post['id']}"


def post_url(post: dict[str, Any]) -> str:
    kind = "q" if post["type"] == QUESTION else "a"
    return f"https://{post['site']}/{kind}/{post['id']}"


# --- pair kinds (plain functions) ------------------------------------------------------------------------

def title_body_outcome(question: dict[str, Any], policy: RejectPolicy) -> dict[str, Any]:
    """A question -> its title/body pair, or a reject saying why not."""
    provenance = {"record": post_ref(question), "input": question["input"], "license": question["license"],
                  "url": post_url(question), "site": question["site"], "post_ids": [question["id"]],
                  "tags": question["tags"]}
    if not question["title"] or not question["body"]:
        reason = "missing_title" if not question["title"] else "empty_body"
        return _question_reject(TITLE_BODY, provenance, reason, {}, question, policy)
    return new_pair(dataset=TITLE_BODY, source=SOURCE_NAME, query=question["title"], document=question["body"],
                    provenance=provenance)


def choose_answer(question: dict[str, Any], answers: Iterable[dict[str, Any]], min_answer_score: int,
                  accepted_min_score: int | None) -> tuple[dict[str, Any] | None, str]:
    """The accepted answer, else the best answer at or above the score bar (ties: smallest id).

    Returns (answer, how) with how in {"accepted", "top_scored"} or (None, reason)."""
    answers = sorted(answers, key=lambda a: _to_int(a["id"]))
    accepted_id = question.get("accepted_answer_id")
    if accepted_id:
        for answer in answers:
            if answer["id"] == accepted_id and answer["body"]:
                if accepted_min_score is None or answer["score"] >= accepted_min_score:
                    return answer, "accepted"
    candidates = [a for a in answers if a["body"] and a["score"] >= min_answer_score]
    if not candidates:
        return None, "no_answer" if not answers else "no_answer_above_min_score"
    best = max(candidates, key=lambda a: (a["score"], -_to_int(a["id"])))
    return best, "top_scored"


def question_answer_outcome(question: dict[str, Any], answers: Iterable[dict[str, Any]],
                            config: StackExchangeSourceConfig, policy: RejectPolicy) -> dict[str, Any]:
    answer, how = choose_answer(question, answers, config.min_answer_score, config.accepted_answer_min_score)
    provenance = {"record": post_ref(question), "input": question["input"], "license": question["license"],
                  "url": post_url(question), "site": question["site"], "post_ids": [question["id"]],
                  "tags": question["tags"]}
    if answer is None:
        return _question_reject(QUESTION_ANSWER, provenance, how, {"question_id": question["id"]}, question,
                                policy)
    query = "\n\n".join(part for part in (question["title"], question["body"]) if part)
    if not query:
        return _question_reject(QUESTION_ANSWER, provenance, "empty_question", {}, question, policy)
    provenance.update({
        "record": f"{post_ref(question)}+{answer['id']}",
        "license": combine_licenses(question["license"], answer["license"]),
        "post_ids": [question["id"], answer["id"]],
        "answer_url": post_url(answer),
        "answer_choice": how,
        "answer_score": answer["score"],
    })
    return new_pair(dataset=QUESTION_ANSWER, source=SOURCE_NAME, query=query, document=answer["body"],
                    provenance=provenance)


def duplicate_outcome(link: dict[str, Any], closed: dict[str, Any] | None, target: dict[str, Any] | None,
                      config: StackExchangeSourceConfig, policy: RejectPolicy) -> dict[str, Any]:
    """A duplicate link (closed question -> its target) -> a pair, or a reject when either end is absent."""
    record = f"{link['site']}/postlinks/{link['id']}"
    provenance = {"record": record, "input": link["input"], "site": link["site"],
                  "post_ids": [link["post_id"], link["related_post_id"]],
                  "license": combine_licenses(*(p["license"] for p in (closed, target) if p)) if (closed or target)
                  else "CC BY-SA 4.0"}
    for role, post, post_id in (("closed", closed, link["post_id"]), ("target", target, link["related_post_id"])):
        if post is None:
            return make_input_reject(dataset=DUPLICATES, source=SOURCE_NAME, provenance=provenance,
                                     reason=f"duplicate_{role}_missing",
                                     detail={"post_id": post_id, "role": role}, policy=policy)
        if post["type"] != QUESTION:
            return make_input_reject(dataset=DUPLICATES, source=SOURCE_NAME, provenance=provenance,
                                     reason=f"duplicate_{role}_not_a_question",
                                     detail={"post_id": post_id, "post_type": post["type"]}, policy=policy)

    def side(post):
        if config.duplicate_text == "title":
            return post["title"]
        return "\n\n".join(part for part in (post["title"], post["body"]) if part)

    provenance["url"] = post_url(closed)
    provenance["target_url"] = post_url(target)
    return new_pair(dataset=DUPLICATES, source=SOURCE_NAME, query=side(closed), document=side(target),
                    provenance=provenance)


def _question_reject(dataset, provenance, reason, detail, question, policy):
    reject = make_input_reject(dataset=dataset, source=SOURCE_NAME, provenance=provenance, reason=reason,
                               detail=detail, policy=policy)
    if policy.keep_texts:
        reject["query"] = question.get("title", "")
        reject["document"] = question.get("body", "")
    return reject


# --- Beam ------------------------------------------------------------------------------------------------

class _ParsePostsLine(beam.DoFn):
    """(file name, raw line bytes) -> posts on the main output, rejects on "rejects"."""

    def __init__(self, max_row_bytes: int, names: dict[str, str], line_kind: str, policy: RejectPolicy,
                 sites: dict[str, str] | None = None):
        self.max_row_bytes = max_row_bytes
        self.policy = policy
        self.names = names  # full uri -> release-stable name
        self.sites = sites or {}  # release-stable name -> site, decided before the run (stackexchange_layout)
        self.line_kind = line_kind  # "posts" or "links"
        self.rows = Metrics.counter("read", f"stackexchange_{line_kind}_rows")
        self.bad_rows = Metrics.counter("read", f"stackexchange_{line_kind}_rejected_rows")

    def process(self, element):
        uri, raw, problem = element
        name = self.names.get(uri) or self.names.get(os.path.abspath(uri)) or os.path.basename(uri)
        site = self.sites.get(name) or site_of(name)
        provenance = {"record": f"{site}/{name.rsplit('/', 1)[-1]}", "input": name, "site": site}
        if problem is not None:
            # An over-long row (kept only as a prefix), a truncated/corrupt compressed stream, or a run of lines
            # that are not rows (sources.xml_lines: one reject with its line range).
            self.bad_rows.inc()
            reason, detail = ((problem["reason"], problem["detail"]) if isinstance(problem, dict)
                              else ("row_too_large" if problem == "oversized_line" else problem, None))
            if detail and "first_line" in detail:
                provenance["lines"] = f"{detail['first_line']}-{detail['last_line']}"
            yield beam.pvalue.TaggedOutput("rejects", make_input_reject(
                dataset=POSTS, source=SOURCE_NAME, provenance=provenance, reason=reason, detail=detail,
                raw=raw[:200].decode("utf-8", "replace"), policy=self.policy))
            return
        text, decode_error = decode_text(raw)
        if decode_error:
            self.bad_rows.inc()
            yield beam.pvalue.TaggedOutput("rejects", make_input_reject(
                dataset=POSTS, source=SOURCE_NAME, provenance=provenance, reason="invalid_utf8",
                detail={"error": decode_error}, raw=raw[:200].decode("utf-8", "replace"), policy=self.policy))
            return
        attributes, reason = parse_row(text, self.max_row_bytes)
        if attributes is None:
            if reason is not None:
                self.bad_rows.inc()
                yield beam.pvalue.TaggedOutput("rejects", make_input_reject(
                    dataset=POSTS, source=SOURCE_NAME, provenance=provenance, reason=reason, raw=text[:2000],
                    policy=self.policy))
            return
        self.rows.inc()
        if self.line_kind == "links":
            yield {"site": site, "input": name, "id": attributes.get("Id", ""),
                   "post_id": attributes.get("PostId", ""), "related_post_id": attributes.get("RelatedPostId", ""),
                   "link_type": attributes.get("LinkTypeId", "")}
            return
        if not attributes.get("Id"):
            self.bad_rows.inc()
            yield beam.pvalue.TaggedOutput("rejects", make_input_reject(
                dataset=POSTS, source=SOURCE_NAME, provenance=provenance, reason="missing_id", raw=text[:2000],
                policy=self.policy))
            return
        yield post_from_row(attributes, site, name)


class _ReadArchive(beam.DoFn):
    """A site .7z -> (member name, raw line) for its Posts.xml and PostLinks.xml.

    Members are written to temp files whose names we choose (never the member's own path, so a
    "../../etc/passwd" member name cannot write outside the temp folder); other members are not extracted.
    """

    def __init__(self, wanted: str, max_row_bytes: int, policy: RejectPolicy, max_extracted_bytes: int = 64 << 30):
        self.wanted = wanted  # "Posts.xml" or "PostLinks.xml"
        self.max_row_bytes = max_row_bytes
        self.policy = policy
        self.max_extracted_bytes = max_extracted_bytes

    def process(self, archive_uri: str) -> Iterator[tuple[str, bytes]]:
        import py7zr

        workdir = tempfile.mkdtemp(prefix="se7z-")
        try:
            local_archive = os.path.join(workdir, "archive.7z")
            with FileSystems.open(archive_uri, compression_type="uncompressed") as src, \
                    open(local_archive, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            member_name = f"{archive_uri}!{self.wanted}"
            target = os.path.join(workdir, "member.xml")
            try:
                with py7zr.SevenZipFile(local_archive, mode="r") as archive:
                    chosen, refused = choose_archive_member(archive.list(), self.wanted, self.max_extracted_bytes)
                    for name, reason, detail in refused:
                        yield beam.pvalue.TaggedOutput("rejects", make_input_reject(
                            dataset=POSTS, source=SOURCE_NAME,
                            provenance={"record": f"{os.path.basename(archive_uri)}!{name[:200]}",
                                        "input": os.path.basename(archive_uri)},
                            reason=reason, detail=dict(detail, member=name[:300]), policy=self.policy))
                    if chosen is None:
                        return
                    archive.extract(targets=[chosen], factory=_SingleFileFactory(target, self.max_extracted_bytes))
            except ExtractionBudgetExceeded as exc:
                yield beam.pvalue.TaggedOutput("rejects", make_input_reject(
                    dataset=POSTS, source=SOURCE_NAME,
                    provenance={"record": f"{os.path.basename(archive_uri)}!{self.wanted}",
                                "input": os.path.basename(archive_uri)},
                    reason="archive_member_too_large", detail={"limit_bytes": exc.limit,
                                                               "setting": "download.max_extracted_bytes"},
                    policy=self.policy))
                return
            except Exception as exc:  # py7zr raises many types for corrupt or truncated archives
                yield beam.pvalue.TaggedOutput("rejects", make_input_reject(
                    dataset=POSTS, source=SOURCE_NAME,
                    provenance={"record": os.path.basename(archive_uri), "input": os.path.basename(archive_uri)},
                    reason="unreadable_archive", detail={"error": str(exc).splitlines()[0][:300] if str(exc)
                                                         else type(exc).__name__}, policy=self.policy))
                return
            if not os.path.exists(target):
                return
            with open(target, "rb") as member:
                refuse_wide_encoding(f"{archive_uri}!{chosen}", member.read(4))
            # Progress per unpacked member ("read Posts.xml"): its size is known only once it is unpacked.
            progress = Progress(f"read {self.wanted}", "bytes", os.path.getsize(target))
            yield from read_member_lines(member_name, target, self.max_row_bytes, progress)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


class ExtractionBudgetExceeded(Exception):
    def __init__(self, limit: int):
        super().__init__(f"archive member unpacks to more than {limit} bytes")
        self.limit = limit


def choose_archive_member(infos, wanted: str, max_bytes: int) -> tuple[str | None, list[tuple[str, str, dict]]]:
    """Which archive member named ``wanted`` to read, and every other one refused by name with a reason.

    Archive headers are never trusted: a member whose path leaves the archive root, that is a link or not a
    plain file, or that says it unpacks past the budget is refused; of several usable members the shallowest
    (then first by name) is read and the others are refused as ``duplicate_archive_member``, never dropped
    silently. Extraction is bounded again while writing (headers can lie)."""
    candidates, refused = [], []
    for info in infos:
        name = info.filename
        if name.replace("\\", "/").rsplit("/", 1)[-1] != wanted:
            continue
        if not _safe_member_name(name):
            refused.append((name, "unsafe_archive_member", {}))
        elif getattr(info, "is_symlink", False) or getattr(info, "is_directory", False):
            refused.append((name, "unsafe_archive_member", {"kind": "link" if info.is_symlink else "folder"}))
        elif (info.uncompressed or 0) > max_bytes:
            refused.append((name, "archive_member_too_large", {"declared_bytes": info.uncompressed,
                                                               "limit_bytes": max_bytes,
                                                               "setting": "download.max_extracted_bytes"}))
        else:
            candidates.append(name)
    candidates.sort(key=lambda name: (name.replace("\\", "/").count("/"), name))
    for name in candidates[1:]:
        refused.append((name, "duplicate_archive_member", {"read_instead": candidates[0][:300]}))
    return (candidates[0] if candidates else None), refused


def _safe_member_name(name: str) -> bool:
    """A member path that stays inside the archive's root: no absolute path, drive or ".." component."""
    parts = name.replace("\\", "/").split("/")
    return not name.startswith(("/", "\\")) and ":" not in parts[0] and ".." not in parts


class _SingleFileFactory:
    """py7zr writer factory that sends the one extracted member to a path of our choosing."""

    def __init__(self, path: str, max_bytes: int | None = None):
        self.path = path
        self.max_bytes = max_bytes

    def create(self, filename: str):
        return _FileIO(self.path, self.max_bytes)


class _FileIO:
    def __init__(self, path: str, max_bytes: int | None = None):
        self._handle = open(path, "wb")
        self._size = 0
        self._max_bytes = max_bytes

    def write(self, data):
        self._size += len(data)
        if self._max_bytes is not None and self._size > self._max_bytes:
            self._handle.close()
            raise ExtractionBudgetExceeded(self._max_bytes)
        return self._handle.write(data)

    def read(self, size=None):
        return b""

    def seek(self, offset, whence=0):
        return self._handle.seek(offset, whence)

    def flush(self):
        self._handle.flush()

    def size(self):
        return self._size

    def close(self):
        if not self._handle.closed:
            self._handle.close()


class _ReadDumpLines(beam.DoFn):
    """A file or byte range of one -> (uri, raw line bytes, problem). Lines longer than the row bound come back
    as a prefix with problem "oversized_line", never held whole in memory. Comment/CDATA/PI regions and runs of
    lines that are not rows leave on "runs" as pieces (sources.xml_lines), merged after the read."""

    def __init__(self, max_row_bytes: int, total_bytes: int | None = None):
        self.max_row_bytes = max_row_bytes
        # All the dump files' bytes: the total of the "read" progress line (stderr and Beam metrics).
        self.total_bytes = total_bytes

    def setup(self):
        self.progress = Progress("read", "bytes", self.total_bytes)

    def process(self, unit: FileUnit, scans):
        state, first_line = start_of(unit.index, {i: scans[(unit.uri, i)] for i in range(unit.index)})
        lines = iter_lines(unit.uri, compression=unit.compression, start=unit.start, end=unit.end,
                           first_line=first_line, max_line_bytes=self.max_row_bytes)
        for item in classify_lines(unit.uri, _counted(lines, self.progress), state):
            if isinstance(item, Piece):
                yield beam.pvalue.TaggedOutput("runs", item)
            else:
                yield unit.uri, item.data, item.problem


def _counted(lines, progress):
    for raw in lines:
        # Bytes of the (decompressed) line and its newline: for a plain file, the share of the file read.
        progress.add(len(raw.data) + 1)
        yield raw


def read_member_lines(name: str, path: str, max_row_bytes: int, progress):
    """The lines of an extracted archive member, as _ReadDumpLines gives them (read whole: runs are final)."""
    lines = _counted(iter_lines(path, max_line_bytes=max_row_bytes), progress)
    for item in classify_lines(name, lines, TEXT):
        yield piece_problem(item) if isinstance(item, Piece) else (name, item.data, item.problem)


def _read_lines(pbegin, label: str, files: list[InputFile], config: "StackExchangeSourceConfig",
                total_bytes: int | None = None):
    """Reads of plain (or gzip) dump files, split into byte ranges so one huge Posts.xml is read in parallel.

    Bytes, not text: invalid UTF-8 becomes a reject, not a crash."""
    units: list[FileUnit] = []
    for item in files:
        compression = compression_of(item.uri)
        unit = FileUnit(uri=item.uri, name=item.name, fmt="xml_rows", dataset=POSTS, license="",
                        compression=compression)
        units.extend(plan_line_units(unit, item.size, config.split_bytes))
    split = [unit for unit in units if unit.ranges > 1 and unit.index < unit.ranges - 1]
    max_row_bytes = config.max_row_bytes
    scans = (pbegin
             | f"{label}SplitRanges" >> CreateUnits(split)
             | f"{label}ScanRanges" >> beam.Map(
                 lambda unit: ((unit.uri, unit.index), scan_range(unit.uri, unit.start, unit.end, max_row_bytes))))
    read = (pbegin
            | f"{label}Units" >> CreateUnits(units)
            | f"{label}Spread" >> beam.Reshuffle()
            | f"{label}Lines" >> beam.ParDo(_ReadDumpLines(config.max_row_bytes, total_bytes),
                                            beam.pvalue.AsDict(scans))
            .with_outputs("runs", main="lines"))
    runs = read.runs | f"{label}Runs" >> MergeRuns()
    return (read.lines, runs) | f"{label}WithRuns" >> beam.Flatten()


def _read_archives(pbegin, label: str, archives: list[str], wanted: str, max_row_bytes: int,
                   policy: RejectPolicy, max_extracted_bytes: int = 64 << 30):
    return (pbegin
            | f"{label}Archives" >> beam.Create(archives)
            | f"{label}Extract" >> beam.ParDo(_ReadArchive(wanted, max_row_bytes, policy, max_extracted_bytes))
            .with_outputs("rejects", main="lines"))


class ReadStackExchange(beam.PTransform):
    """Planned dump files -> {"pairs", "rejects" (of pair candidates), "row_rejects" (rows that could not be
    read), "input_rows" (one dict: what became of every row of every file read, see stackexchange_rows)}."""

    def __init__(self, plan: list[DumpFile], config: StackExchangeSourceConfig, context: RunContext):
        super().__init__()
        self.plan = plan
        self.inputs = [dump.file for dump in plan]
        self.config = config
        self.policy = context.policy
        self.max_extracted_bytes = context.max_extracted_bytes

    def expand(self, pbegin):
        config = self.config
        names = {dump.file.uri: dump.file.name for dump in self.plan}
        sites = {dump.file.name: dump.site for dump in self.plan}
        # Provenance name of each table read -> where it comes from, for the row accounting.
        files: dict[str, dict[str, str]] = {}
        archive_names: dict[str, str] = {}
        posts_files = [dump.file for dump in self.plan if not dump.archive and POSTS_TABLE in dump.tables]
        link_files = [dump.file for dump in self.plan if not dump.archive and LINKS in dump.tables]
        for dump in self.plan:
            if not dump.archive:
                files[dump.file.name] = {"input": dump.file.name, "member": "", "site": dump.site,
                                         "table": dump.tables[0]}
                continue
            stem = dump.file.uri.rsplit("/", 1)[-1]
            archive_names[stem] = dump.file.name
            for table in dump.tables:
                names[f"{dump.file.uri}!{table}"] = f"{stem}/{table}"
                sites[f"{stem}/{table}"] = dump.site
                files[f"{stem}/{table}"] = {"input": dump.file.name, "member": table, "site": dump.site,
                                            "table": table}
        posts_archives = [dump.file.uri for dump in self.plan if dump.archive and POSTS_TABLE in dump.tables]
        links_archives = [dump.file.uri for dump in self.plan if dump.archive and LINKS in dump.tables]
        if config.duplicates:
            for line in missing_links_warnings(self.plan):
                print(f"warning: {line}", file=sys.stderr)

        row_reject_parts = []
        reject_parts = []
        row_events = []
        read_files = posts_files + (link_files if config.duplicates else [])
        # The "read" progress line's total: the files' sizes, when they are plain (gzip counts what it inflates).
        plain = all(compression_of(item.uri) == "none" for item in read_files)
        total_bytes = (sum(item.size for item in read_files) or None) if plain else None
        post_lines = [_read_lines(pbegin, "Posts", posts_files, config, total_bytes)]
        link_lines = [_read_lines(pbegin, "Links", link_files, config, total_bytes)] if config.duplicates else []
        if posts_archives:
            extracted = _read_archives(pbegin, "Posts", posts_archives, "Posts.xml", config.max_row_bytes,
                                       self.policy, self.max_extracted_bytes)
            # One worker unpacks an archive; spread its lines so parsing and joins run on all workers.
            post_lines.append(extracted.lines | "PostsArchiveSpread" >> beam.Reshuffle())
            row_reject_parts.append(extracted.rejects)
        if config.duplicates and links_archives:
            extracted_links = _read_archives(pbegin, "Links", links_archives, "PostLinks.xml", config.max_row_bytes,
                                             self.policy, self.max_extracted_bytes)
            link_lines.append(extracted_links.lines | "LinksArchiveSpread" >> beam.Reshuffle())
            row_reject_parts.append(extracted_links.rejects)

        parsed = (post_lines | "PostLines" >> beam.Flatten()
                  | "ParsePosts" >> beam.ParDo(_ParsePostsLine(config.max_row_bytes, names, "posts", self.policy,
                                                               sites))
                  .with_outputs("rejects", main="posts"))
        row_reject_parts.append(parsed.rejects)
        posts = parsed.posts

        policy = self.policy
        question_outcome = (row_outcomes.QUESTION_USED if config.title_body or config.question_answer
                            else row_outcomes.QUESTION_KINDS_OFF)

        def split_by_type(post):
            if post["type"] == QUESTION:
                yield beam.pvalue.TaggedOutput("questions", post)
                yield beam.pvalue.TaggedOutput("rows", (post["input"], question_outcome))
            elif post["type"] == ANSWER:
                yield beam.pvalue.TaggedOutput("answers", post)
                if not config.question_answer:
                    yield beam.pvalue.TaggedOutput("rows", (post["input"], row_outcomes.ANSWER_KIND_OFF))
            else:
                # Not a pair candidate of any kind: accounted for as a row, not rejected as a pair.
                yield beam.pvalue.TaggedOutput("rows", (post["input"], row_outcomes.OTHER_POST_TYPE))

        typed = posts | "SplitByType" >> beam.FlatMap(split_by_type).with_outputs("questions", "answers", "rows")
        row_events.append(typed.rows)
        questions = typed.questions
        pair_parts = []

        if config.title_body:
            title_body = questions | "TitleBody" >> beam.Map(title_body_outcome, policy)
            pair_parts.append(title_body)

        questions_by_key = questions | "KeyQuestions" >> beam.Map(lambda q: ((q["site"], q["id"]), q))
        if config.question_answer:
            answers_by_parent = typed.answers | "KeyAnswers" >> beam.Map(lambda a: ((a["site"], a["parent_id"]), a))

            def join_answers(element):
                _, grouped = element
                answers = list(grouped["answers"])
                chosen: set[str] = set()
                for question in grouped["question"]:
                    outcome = question_answer_outcome(question, answers, config, policy)
                    if outcome.get("stage") != "read":
                        chosen.add(outcome["provenance"]["post_ids"][1])
                    yield outcome
                for event in row_outcomes.answer_outcomes(answers, chosen, bool(grouped["question"])):
                    yield beam.pvalue.TaggedOutput("rows", event)

            joined = ({"question": questions_by_key, "answers": answers_by_parent}
                      | "JoinAnswers" >> beam.CoGroupByKey()
                      | "QuestionAnswer" >> beam.FlatMap(join_answers).with_outputs("rows", main="outcomes"))
            pair_parts.append(joined.outcomes)
            row_events.append(joined.rows)

        if config.duplicates:
            links = (link_lines | "LinkLines" >> beam.Flatten()
                     | "ParseLinks" >> beam.ParDo(_ParsePostsLine(config.max_row_bytes, names, "links", self.policy,
                                                                  sites))
                     .with_outputs("rejects", main="links"))
            row_reject_parts.append(links.rejects)
            row_events.append(links.links | "LinkRows" >> beam.Map(
                lambda l: (l["input"], row_outcomes.LINK_USED if l["link_type"] == DUPLICATE_LINK
                           else row_outcomes.LINK_OTHER)))
            duplicate_links = links.links | "DuplicateLinks" >> beam.Filter(lambda l: l["link_type"] == DUPLICATE_LINK)
            posts_by_key = posts | "KeyPosts" >> beam.Map(lambda p: ((p["site"], p["id"]), p))

            def attach(element, role):
                _, grouped = element
                found = sorted(grouped["post"], key=lambda p: p["input"])
                for link in grouped["links"]:
                    link = dict(link)
                    link[role] = found[0] if found else None
                    yield link

            with_closed = ({"post": posts_by_key,
                            "links": duplicate_links | "KeyByClosed" >> beam.Map(
                                lambda l: ((l["site"], l["post_id"]), l))}
                           | "JoinClosed" >> beam.CoGroupByKey()
                           | "AttachClosed" >> beam.FlatMap(attach, "closed"))
            with_target = ({"post": posts_by_key,
                            "links": with_closed | "KeyByTarget" >> beam.Map(
                                lambda l: ((l["site"], l["related_post_id"]), l))}
                           | "JoinTarget" >> beam.CoGroupByKey()
                           | "AttachTarget" >> beam.FlatMap(attach, "target"))
            pair_parts.append(with_target | "Duplicates" >> beam.Map(
                lambda l: duplicate_outcome(l, l["closed"], l["target"], config, policy)))

        outcomes = (pair_parts or [pbegin | "NoPairs" >> beam.Create([])]) | "Outcomes" >> beam.Flatten()

        def split_outcomes(outcome):
            # Pair outcomes carry a query/document and no stage; rejects carry stage "read".
            if outcome.get("stage") == "read":
                yield beam.pvalue.TaggedOutput("rejects", outcome)
            else:
                yield outcome

        split = outcomes | "SplitOutcomes" >> beam.FlatMap(split_outcomes).with_outputs("rejects", main="pairs")
        reject_parts.append(split.rejects)
        rejects = reject_parts | "ReadRejects" >> beam.Flatten()
        row_rejects = row_reject_parts | "RowRejects" >> beam.Flatten()
        # A row that could not be read is one row with outcome "malformed:<reason>".
        # A collapsed run of lines that are not rows (sources.xml_lines) stands for detail.lines rows.
        row_events.append(row_rejects | "RejectedRows" >> beam.FlatMap(
            lambda r: [(r["provenance"].get("input", ""), row_outcomes.MALFORMED + r["reason"])]
            * max(1, int((r.get("detail") or {}).get("lines") or 1))))
        read_links = config.duplicates
        input_rows = (row_events
                      | "RowEvents" >> beam.Flatten()
                      | "CountRows" >> beam.combiners.Count.PerElement()
                      | "RowCounts" >> beam.MapTuple(lambda event, n: (event[0], event[1], n))
                      | "AllRowCounts" >> beam.combiners.ToList()
                      | "SummarizeRows" >> beam.Map(
                          lambda counts: row_outcomes.summarize(sorted(counts), files, archive_names, read_links)))
        return {"pairs": split.pairs, "rejects": rejects, "row_rejects": row_rejects, "input_rows": input_rows}


def select_inputs(inputs: list[InputFile], source_config: StackExchangeSourceConfig) -> list[InputFile]:
    """The inputs this build reads (and so hashes): Posts and PostLinks tables and site archives, each of a
    known site. Users.xml, Votes.xml, SITE-Users.7z ... in the same folder are neither read nor hashed."""
    return [dump.file for dump in plan_dump(inputs, source_config.site, source_config.duplicates)]


def read(inputs: list[InputFile], source_config: StackExchangeSourceConfig, context: RunContext):
    plan = plan_dump(inputs, source_config.site, source_config.duplicates)
    for dump in plan:
        if not dump.archive:
            refuse_wide_encoding(dump.file.uri)  # the line reader reads UTF-8: one line, before the run
    return ReadStackExchange(plan, source_config, context)


# A small real slice of the cardano.stackexchange.com dump (CC BY-SA 4.0; see ATTRIBUTION.md beside it).
BUNDLED_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "stackexchange",
                              "cardano.stackexchange.com")


def default_inputs(source_config: StackExchangeSourceConfig, download_config) -> list[str]:
    """Without ``source.sites``: the bundled sample. With it: download each site's SITE.7z into the cache
    (resumed, reused) and return the paths.

    The cache names files by URL hash; a link named SITE.7z beside them keeps the site name (and so the
    provenance and ids) independent of where the cache lives."""
    from sources.download import fetch

    if not source_config.sites:
        print(f"no --input: building the sample bundled with the project ({BUNDLED_SAMPLE}: 315 posts of "
              "cardano.stackexchange.com, CC BY-SA 4.0); pass --input DUMP, or --set source.sites=[SITE] to "
              "download a site's dump", file=sys.stderr)
        return [BUNDLED_SAMPLE]
    paths = []
    for site in source_config.sites:
        url = source_config.url_template.format(site=site)
        cached = fetch(url, download_config.cache_dir, timeout_s=download_config.timeout_s,
                       progress=not is_quiet())
        named = os.path.join(os.path.expanduser(download_config.cache_dir), "stackexchange", f"{site}.7z")
        os.makedirs(os.path.dirname(named), exist_ok=True)
        if os.path.islink(named) or os.path.exists(named):
            os.unlink(named)
        os.symlink(os.path.abspath(cached), named)
        paths.append(named)
    return paths


SOURCE = Source(name=SOURCE_NAME, config_model=StackExchangeSourceConfig, read=read,
                default_inputs=default_inputs, select_inputs=select_inputs,
                description="StackExchange site dumps (Posts.xml + PostLinks.xml, or SITE.7z)",
                license_id="cc-by-sa-4.0",
                attribution=(
                    "Content from Stack Exchange sites (https://stackexchange.com), contributed by their users "
                    "and licensed under CC BY-SA (2.5, 3.0 or 4.0; the version of every pair is in "
                    "`provenance.license`). Each pair links its posts in `provenance.url` / `answer_url`, and "
                    "the authors are credited there. Modified: HTML converted to plain text that keeps what a "
                    "reader sees (code blocks with their line breaks and indentation, inline code, lists as "
                    "\"1. item\" / \"- item\", link text, image alt text but not the stock \"enter image "
                    "description here\", block quotes as \"> \" lines, table rows with cells joined by "
                    "\" | \"; titles as written), Unicode normalized (NFKC), pairs filtered. This release is shared under the same licence "
                    "(CC BY-SA 4.0)."))
