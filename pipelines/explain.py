"""`python -m pipelines.explain RELEASE ID [--json]`: the lineage of one pair, kept or rejected.

RELEASE is a local folder or ``s3://bucket/prefix`` (endpoint and keys from the AWS environment or profile).
Prints where the pair came from (input file with its sha256, record, licence, url), every stage's decision
with its numbers (rank and scores, the duplicate's survivor and where to find it, the negatives with their
scores), and for a kept pair the rejects it absorbed as a dedup survivor.

Lookups follow the release's own sharding rule (shard = id hash mod the dataset's shard count): finding an
id opens one data shard and one rejects shard per dataset, not the whole release. Only the list of absorbed
duplicates needs every rejects shard; it is read (and says so) unless ``--no-absorbed`` is given.

Exit status: 0 when the id is found, 1 when it is in neither the shards nor the rejects (one line), 2 when
the id is malformed or the release cannot be read (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from pipelines.cli import run_command
from pipelines.core.errors import NotFound, UsageError
from pipelines.core.records import ALL_STAGES, id_bucket
from pipelines.release.bounded import MAX_MANIFEST_BYTES, ObjectTooLarge, get_bounded, gzip_lines
from pipelines.release.store import ReleaseStore, StoreError
from pipelines.release.stores import open_store
from pipelines.core.schema import MANIFEST_KEY

_SHARD_INDEX = re.compile(r"-(\d+)\.jsonl\.gz$")
_ID_PATTERN = re.compile(r"^[0-9a-f]{16,64}$")
_FOLLOW_HOPS = 5
_SHOWN_RELATED = 10
_SHOWN_ABSORBED = 20
TEXT_CHARS = 300


class ReleaseUnreadable(UsageError):
    """The release (or one of its objects) cannot be read: exit status 2, one line."""


@dataclass
class Located:
    """One line of a shard: where it is and what it holds."""

    kind: str  # "data" or "rejects"
    dataset: str
    key: str
    line: int  # 0-based line number in the decompressed shard
    span: tuple[int, int]  # [start, end) byte offsets in the decompressed stream
    record: dict[str, Any]

    def where(self) -> dict[str, Any]:
        return {"kind": self.kind, "dataset": self.dataset, "key": self.key, "line": self.line,
                "offsets": list(self.span)}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


class Release:
    """Read access to one release through the ReleaseStore interface (get_bytes only)."""

    def __init__(self, store: ReleaseStore):
        self.store = store
        try:
            present = store.head(MANIFEST_KEY) is not None
        except Exception as exc:  # any store (local, S3): one line, never a traceback
            raise ReleaseUnreadable(f"cannot read {store.uri_for(MANIFEST_KEY)}: {_one_line(exc)}") from None
        if not present:
            raise ReleaseUnreadable(f"no {MANIFEST_KEY} at {store.uri}: not a complete release")
        try:
            raw = get_bounded(store, MANIFEST_KEY, MAX_MANIFEST_BYTES, "manifest")
        except StoreError as exc:
            raise ReleaseUnreadable(_one_line(exc)) from None
        try:
            self.manifest = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReleaseUnreadable(f"{store.uri_for(MANIFEST_KEY)} is not valid JSON: {_one_line(exc)}") from None
        if not isinstance(self.manifest, dict) or not isinstance(self.manifest.get("datasets"), dict):
            raise ReleaseUnreadable(f"{store.uri_for(MANIFEST_KEY)} is not a release manifest (no datasets)")

    def _get(self, key: str) -> bytes:
        try:
            return self.store.get_bytes(key)
        except Exception as exc:  # any store (local, S3): one line, never a traceback
            raise ReleaseUnreadable(f"cannot read {self.store.uri_for(key)}: {_one_line(exc)}") from None

    def scan_shard(self, kind: str, dataset: str, key: str,
                   searches: list[tuple[bytes, Callable[[dict[str, Any]], bool]]]) -> list[list[Located]]:
        """One streamed pass over a shard: for each (needle, accept), the lines holding the needle whose record
        ``accept`` takes. Lines are canonical JSON (sorted keys, no spaces, ASCII): a byte search finds candidate
        lines without parsing the others; each candidate is parsed and checked, since the needle could also occur
        in a nested object. Never more than one line (bounded) in memory: a gzip bomb fails fast."""
        found: list[list[Located]] = [[] for _ in searches]
        where = self.store.uri_for(key)
        try:
            with self.store.local_path(key) as path:
                position = 0
                for number, line in enumerate(gzip_lines(path)):
                    for index, (needle, accept) in enumerate(searches):
                        if needle not in line:
                            continue
                        try:
                            record = json.loads(line)
                        except ValueError:
                            raise ReleaseUnreadable(f"{where}: line at byte {position} is not JSON") from None
                        if isinstance(record, dict) and accept(record):
                            found[index].append(Located(kind, dataset, key, number,
                                                        (position, position + len(line)), record))
                    position += len(line)
        except ObjectTooLarge as exc:
            raise ReleaseUnreadable(f"{where}: {exc}") from None
        except (OSError, EOFError, zlib.error) as exc:
            raise ReleaseUnreadable(f"{where} is not a readable gzip shard: {_one_line(exc)}") from None
        except StoreError as exc:
            raise ReleaseUnreadable(f"cannot read {where}: {_one_line(exc)}") from None
        return found

    def shard_keys(self, kind: str) -> dict[str, list[str]]:
        """dataset -> its listed shard keys, for kind "data" (manifest "datasets") or "rejects"."""
        section = self.manifest.get("datasets" if kind == "data" else "rejects") or {}
        return {dataset: [shard["key"] for shard in summary.get("shards", [])]
                for dataset, summary in sorted(section.items())}

    @staticmethod
    def home_shard(keys: list[str], record_id: str) -> str | None:
        """The one shard of a dataset that can hold this id: the writer's rule, id_bucket(id, shard count)."""
        # Shard index -> key, from the names the manifest lists ("shard-00003.jsonl.gz"): no need to know
        # the writer's naming here (and importing it would load Beam into a command-line tool).
        by_index = {int(match.group(1)): key for key in keys if (match := _SHARD_INDEX.search(key))}
        if not by_index:
            return None
        return by_index.get(id_bucket(record_id, max(by_index) + 1))

    def find(self, kind: str, record_id: str) -> list[Located]:
        """Every line with this id in its home shard of each dataset."""
        found = []
        for dataset, keys in self.shard_keys(kind).items():
            key = self.home_shard(keys, record_id)
            if key is not None:
                found += self._lines_with(kind, dataset, key, b'"id":"%s"' % record_id.encode("ascii"),
                                          lambda record: record.get("id") == record_id)
        return found

    def _lines_with(self, kind: str, dataset: str, key: str, needle: bytes, accept) -> list[Located]:
        return self.scan_shard(kind, dataset, key, [(needle, accept)])[0]

    def scan_rejects(self, record_id: str) -> tuple[list[Located], list[Located], int]:
        """Reads every rejects shard: (rejects whose detail.survivor_id is this id, rejects with this id, shards
        read)."""
        absorbed, same_id, shards = [], [], 0
        survivor_needle = b'"survivor_id":"%s"' % record_id.encode("ascii")
        id_needle = b'"id":"%s"' % record_id.encode("ascii")
        for dataset, keys in self.shard_keys("rejects").items():
            for key in keys:
                shards += 1
                found_absorbed, found_same = self.scan_shard("rejects", dataset, key, [
                    (survivor_needle, lambda r: _detail(r).get("survivor_id") == record_id),
                    (id_needle, lambda r: r.get("id") == record_id)])
                absorbed += found_absorbed
                same_id += found_same
        return absorbed, same_id, shards


def _detail(record: dict[str, Any]) -> dict[str, Any]:
    detail = record.get("detail")
    return detail if isinstance(detail, dict) else {}


def normalise_id(text: str) -> str | None:
    candidate = text.strip().lower()
    return candidate if _ID_PATTERN.match(candidate) else None


# -- the lineage -----------------------------------------------------------------------------------------------

@dataclass
class Lineage:
    record_id: str
    status: str  # "kept" or "rejected"
    primary: Located
    other_copies: list[Located] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    input_file: dict[str, Any] | None = None
    related: dict[str, Any] = field(default_factory=dict)
    absorbed: list[Located] | None = None
    absorbed_shards_read: int = 0


def _input_entry(manifest: dict[str, Any], record: dict[str, Any]) -> dict[str, Any] | None:
    provenance = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    name = provenance.get("input")
    for item in manifest.get("inputs") or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    return None


def locate(release: Release, record_id: str, hops: int = _FOLLOW_HOPS) -> dict[str, Any]:
    """Where another id is: kept (shard and line), rejected (stage, reason; its own survivor followed), or
    not found."""
    kept = release.find("data", record_id)
    if kept:
        return {"id": record_id, "status": "kept", **kept[0].where()}
    rejected = release.find("rejects", record_id)
    if not rejected:
        return {"id": record_id, "status": "not found"}
    reject = rejected[0].record
    result = {"id": record_id, "status": "rejected", "stage": reject.get("stage"), "reason": reject.get("reason"),
              **rejected[0].where()}
    survivor = _detail(reject).get("survivor_id")
    if isinstance(survivor, str) and hops > 1 and normalise_id(survivor) and survivor != record_id:
        result["survivor"] = locate(release, survivor, hops - 1)
    return result


def _expand_extra(provenance: dict[str, Any]) -> dict[str, Any]:
    """A published row keeps source-specific provenance in ``extra`` (a JSON object as a string, so every row
    has one schema): shown as keys of their own."""
    extra = provenance.get("extra")
    try:
        parsed = json.loads(extra) if isinstance(extra, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return provenance
    return {**{key: value for key, value in provenance.items() if key != "extra"}, **parsed}


def _stage_decisions(manifest: dict[str, Any], status: str, record: dict[str, Any], absorbed: list[Located] | None
                     ) -> list[dict[str, Any]]:
    skipped = set(manifest.get("skipped_stages") or [])
    run = list((manifest.get("funnel") or {}).get("stages") or [])
    rejected_at = record.get("stage") if status == "rejected" else None
    scores = record.get("scores") if isinstance(record.get("scores"), dict) else {}
    decisions = []
    reached = True
    # The built-in stages in graph order, then any other stage this release ran (the funnel lists them).
    for stage in list(ALL_STAGES) + [stage for stage in run if stage not in ALL_STAGES]:
        if stage in skipped:
            decisions.append({"stage": stage, "decision": "skipped"})
            continue
        if run and stage not in run:
            decisions.append({"stage": stage, "decision": "not run"})
            continue
        if not reached:
            decisions.append({"stage": stage, "decision": "not reached"})
            continue
        if stage == rejected_at:
            decisions.append({"stage": stage, "decision": "dropped", "reason": record.get("reason"),
                              "detail": _detail(record)})
            reached = False
            continue
        entry: dict[str, Any] = {"stage": stage, "decision": "passed"}
        if status == "kept":
            if stage == "consistency":
                entry.update({key: scores[key] for key in ("rank", "positive") if key in scores})
            elif stage == "negatives":
                entry["negatives"] = len(record.get("negatives") or [])
            elif stage in ("exact_dedup", "minhash") and absorbed is not None:
                entry["absorbed"] = sum(1 for item in absorbed if item.record.get("stage") == stage)
        decisions.append(entry)
    return decisions


def explain(release: Release, record_id: str, scan_absorbed: bool = True) -> Lineage | None:
    kept = release.find("data", record_id)
    rejected = release.find("rejects", record_id) if not kept else []
    if not kept and not rejected:
        return None
    primary = kept[0] if kept else rejected[0]
    lineage = Lineage(record_id=record_id, status="kept" if kept else "rejected", primary=primary,
                      other_copies=(kept + rejected)[1:], input_file=_input_entry(release.manifest, primary.record))
    if kept and scan_absorbed:
        absorbed, same_id_rejects, shards = release.scan_rejects(record_id)
        lineage.absorbed, lineage.absorbed_shards_read = absorbed, shards
        # The same input row given twice has one id: its second copy is an exact-duplicate reject.
        lineage.other_copies += same_id_rejects
    lineage.stages = _stage_decisions(release.manifest, lineage.status, primary.record, lineage.absorbed)
    detail = _detail(primary.record)
    if lineage.status == "rejected":
        survivor = detail.get("survivor_id")
        if isinstance(survivor, str) and normalise_id(survivor):
            lineage.related["survivor"] = locate(release, survivor)
        outranked_by = detail.get("outranked_by")
        if isinstance(outranked_by, list):
            scores = detail.get("outranked_scores")
            scores = scores if isinstance(scores, list) and len(scores) == len(outranked_by) else None
            related = []
            for index, other in enumerate(outranked_by[:_SHOWN_RELATED]):
                if isinstance(other, str) and normalise_id(other):
                    found = locate(release, other, hops=1)
                    if scores is not None:
                        found["score"] = scores[index]
                    related.append(found)
            lineage.related["outranked_by"] = related
    return lineage


def lineage_json(lineage: Lineage) -> dict[str, Any]:
    record = lineage.primary.record
    scores = record.get("scores") if isinstance(record.get("scores"), dict) else {}
    result: dict[str, Any] = {
        "id": lineage.record_id,
        "status": lineage.status,
        "dataset": lineage.primary.dataset,
        "location": lineage.primary.where(),
        "provenance": record.get("provenance"),
        "input": lineage.input_file,
        "stages": lineage.stages,
        "record": record,
        "other_copies": [copy.where() | {"stage": copy.record.get("stage"), "reason": copy.record.get("reason")}
                         for copy in lineage.other_copies],
    }
    if lineage.status == "kept":
        negatives = record.get("negatives") or []
        negative_scores = scores.get("negatives") or []
        result["scores"] = {"positive": scores.get("positive"), "rank": scores.get("rank"),
                            "negatives": [{"text": text, "score": negative_scores[i] if i < len(negative_scores)
                                           else None} for i, text in enumerate(negatives)]}
        if lineage.absorbed is not None:
            result["absorbed"] = [item.where() | {"id": item.record.get("id"), "stage": item.record.get("stage"),
                                                  "reason": item.record.get("reason"), "detail": _detail(item.record)}
                                  for item in lineage.absorbed]
            result["rejects_shards_scanned"] = lineage.absorbed_shards_read
    else:
        result["stage"] = record.get("stage")
        result["reason"] = record.get("reason")
        result["detail"] = _detail(record)
        result.update(lineage.related)
    return result


# -- text output -----------------------------------------------------------------------------------------------

def clean(value: Any, limit: int | None = TEXT_CHARS) -> str:
    """Untrusted text made safe for a terminal: control and bidi-override characters shown escaped (a pair
    could otherwise rewrite the auditor's screen), long texts cut."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    shown = []
    for char in text:
        if char in "\n\t":
            shown.append("\\n" if char == "\n" else "\\t")
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            shown.append(f"\\u{ord(char):04x}")
        else:
            shown.append(char)
    text = "".join(shown)
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... [{len(text) - limit} more chars]"
    return text


def _where_text(where: dict[str, Any]) -> str:
    return (f"{where['key']} line {where['line']} (0-based; bytes {where['offsets'][0]}-{where['offsets'][1]} of "
            "the decompressed stream)")


def _located_text(found: dict[str, Any]) -> str:
    if found["status"] == "kept":
        return f"{found['id']}: kept, {found['dataset']}, {_where_text(found)}"
    if found["status"] == "rejected":
        text = (f"{found['id']}: rejected at {clean(found.get('stage'))} ({clean(found.get('reason'))}), "
                f"{_where_text(found)}")
        if "survivor" in found:
            text += f"; its survivor {_located_text(found['survivor'])}"
        return text
    return f"{found['id']}: not found in this release"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else clean(value)


def format_lineage(lineage: Lineage, full: bool = False) -> str:
    limit = None if full else TEXT_CHARS
    data = lineage_json(lineage)
    record = lineage.primary.record
    lines = [f"pair {lineage.record_id}: {lineage.status.upper()}",
             f"  dataset    {clean(lineage.primary.dataset)}",
             f"  location   {_where_text(data['location'])}"]
    if "query" in record:
        lines.append(f"  query      {clean(record.get('query'), limit)}")
        lines.append(f"  document   {clean(record.get('document'), limit)}")
    elif "raw" in record:
        lines.append(f"  raw input  {clean(record.get('raw'), limit)}")
    lines.append("provenance")
    provenance = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    provenance = _expand_extra(provenance)
    for key in ["input", "record", "license", "url"] + sorted(set(provenance) - {"input", "record", "license", "url"}):
        if key in provenance:
            lines.append(f"  {key:<10} {clean(provenance[key], limit)}")
    if lineage.input_file:
        lines.append(f"  input file {clean(lineage.input_file.get('name'))}: {lineage.input_file.get('bytes', '?'):,} "
                     f"bytes, sha256 {clean(lineage.input_file.get('sha256'))}")
    elif provenance.get("input"):
        lines.append("  input file not listed in the manifest's inputs")
    lines.append("stages")
    for stage in lineage.stages:
        text = f"  {stage['stage']:<12} {stage['decision']}"
        extras = {k: v for k, v in stage.items() if k not in ("stage", "decision")}
        if stage["decision"] == "dropped":
            text += f": {clean(stage.get('reason'))} (numbers under 'decision')"
        elif extras:
            text += " (" + ", ".join(f"{k} {_number(v)}" for k, v in extras.items()) + ")"
        lines.append(text)
    if lineage.status == "kept":
        scores = data["scores"]
        lines.append("scores")
        lines.append(f"  positive   {_number(scores['positive']) if scores['positive'] is not None else '-'}")
        lines.append(f"  rank       {clean(scores['rank']) if scores['rank'] is not None else '-'}")
        lines.append(f"  negatives  {len(scores['negatives'])}")
        for negative in scores["negatives"]:
            score = _number(negative["score"]) if negative["score"] is not None else "-"
            lines.append(f"    {score:>8}  {clean(negative['text'], None if full else 120)}")
        if lineage.absorbed is None:
            lines.append("absorbed duplicates: not looked up (--no-absorbed)")
        else:
            lines.append(f"absorbed duplicates: {len(lineage.absorbed)} (rejects whose detail.survivor_id is this "
                         f"id; read all {lineage.absorbed_shards_read} rejects shard(s) to find them)")
            shown = lineage.absorbed if full else lineage.absorbed[:_SHOWN_ABSORBED]
            for item in shown:
                detail = _detail(item.record)
                numbers = ", ".join(f"{k} {_number(detail[k])}" for k in ("similarity", "cluster_id") if k in detail)
                lines.append(f"  {clean(item.record.get('id'))}  {clean(item.record.get('stage'))}/"
                             f"{clean(item.record.get('reason'))}{'  ' + numbers if numbers else ''}  "
                             f"{_where_text(item.where())}")
            if len(shown) < len(lineage.absorbed):
                lines.append(f"  ... and {len(lineage.absorbed) - len(shown)} more (--full or --json lists all)")
    else:
        lines.append("decision")
        lines.append(f"  stage      {clean(data['stage'])}")
        lines.append(f"  reason     {clean(data['reason'])}")
        shown_below = {"outranked_by", "outranked_scores"} if "outranked_by" in data else set()
        for key in sorted(set(data["detail"]) - shown_below):
            value = data["detail"][key]
            shown = clean(value, limit) if isinstance(value, (list, dict)) else _number(value)
            lines.append(f"  {clean(key):<10} {shown}")
        if "survivor" in data:
            lines.append(f"  survivor   {_located_text(data['survivor'])}")
        if "outranked_by" in data:
            listed = len(data["detail"].get("outranked_by") or [])
            lines.append(f"  outranked by ({len(data['outranked_by'])} of {listed} listed in the reject)")
            for other in data["outranked_by"]:
                score = f"score {_number(other['score'])}  " if "score" in other else ""
                lines.append(f"    {score}{_located_text(other)}")
    for copy in lineage.other_copies:
        status = "kept" if copy.kind == "data" else f"rejected at {clean(copy.record.get('stage'))} " \
                                                     f"({clean(copy.record.get('reason'))})"
        lines.append(f"another row with this id: {status}, {_where_text(copy.where())}")
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------------------------

def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.explain",
        description="Show the lineage of one pair of a release, kept or rejected: its input record and licence, "
                    "each stage's decision with its numbers, scores and negatives, the duplicates it absorbed.",
        epilog="exit status: 0 found, 1 not in the release, 2 malformed id or release unreadable. S3 releases take their endpoint "
               "and keys from the standard AWS environment variables or profile.")
    parser.add_argument("release", metavar="RELEASE", help="a release folder or s3://bucket/prefix")
    parser.add_argument("id", metavar="ID", help="the pair (or reject) id, 32 hex characters")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--full", action="store_true",
                        help="print texts and the list of absorbed duplicates in full (they are cut otherwise)")
    parser.add_argument("--no-absorbed", action="store_true",
                        help="do not read every rejects shard to list the duplicates a kept pair absorbed")
    return parser


def _explain_command(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    record_id = normalise_id(args.id)
    if record_id is None:
        # A malformed id is a usage error (2), like a bad release path; 1 means a well-formed id is not there.
        raise UsageError(f"{clean(args.id, 80)!s} is not a pair id (ids are 32 hexadecimal characters)")
    try:
        store = open_store(args.release)
    except (StoreError, ValueError, ImportError) as exc:  # an unsupported URI, a bad bucket name
        raise ReleaseUnreadable(f"cannot open release {clean(args.release, 200)}: {_one_line(exc)}") from None
    lineage = explain(Release(store), record_id, scan_absorbed=not args.no_absorbed)
    if lineage is None:
        raise NotFound(f"{record_id} is in neither the shards nor the rejects of {clean(args.release, 200)}")
    output = (json.dumps(lineage_json(lineage), indent=1, sort_keys=True, ensure_ascii=True) if args.json
              else format_lineage(lineage, full=args.full))
    try:
        print(output)
        sys.stdout.flush()
    except BrokenPipeError:  # piped into head: not an error; silence the flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(_explain_command, argv)


if __name__ == "__main__":
    sys.exit(main())
