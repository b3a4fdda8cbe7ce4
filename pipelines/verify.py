"""Re-check a published release the way an auditor would: ``python -m pipelines.verify RELEASE [--sample N]``.

RELEASE is a local folder or ``s3://bucket/prefix`` (endpoint and keys from the AWS environment or profile).
Every object the manifest lists is fetched and compared with the manifest (size, sha256); every shard is
decompressed and each line checked (ASCII, canonical JSON with sorted keys, the pair or reject schema, its
dataset); row counts are checked against the manifest and counts.json, line offsets against offsets.json.gz;
objects under data/ or rejects/ that the manifest does not list are reported too (a trainer globbing the
folder would read them). Each failing object is named once, with the first thing found wrong (and the line).

``--sample N`` is a spot check: N shards, picked at random (``--seed`` to repeat a pick), are re-hashed and
parsed in full; every other object is only checked to exist with the listed size (and, on S3, the sha256
kept in its metadata), and the small index files are always checked in full.

Exit status: 0 when everything checked is right, 1 when something is wrong (one line per failing object),
2 when the release cannot be read at all (bad URI, credentials, missing bucket).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from pipelines.records import dumps_line
from pipelines.release.store import ReleaseStore, StoreError, open_store

MANIFEST_KEY = "manifest.json"
RELEASE_FORMAT = "pair-curation/release-v1"
_SHA256_HEX = r"^[0-9a-f]{64}$"
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# -- the manifest ---------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class FileEntry(_Strict):
    key: StrictStr
    bytes: StrictInt = Field(ge=0)
    sha256: StrictStr = Field(pattern=_SHA256_HEX)


class ShardEntry(FileEntry):
    rows: StrictInt = Field(ge=0)


class DatasetEntry(_Strict):
    rows: StrictInt = Field(ge=0)
    shards: list[ShardEntry]
    counts: FileEntry
    offsets: FileEntry


class RejectsEntry(_Strict):
    rows: StrictInt = Field(ge=0)
    shards: list[ShardEntry]


class Manifest(_Strict):
    format: Literal["pair-curation/release-v1"]
    datasets: dict[str, DatasetEntry]
    rejects: dict[str, RejectsEntry] = {}
    files: list[FileEntry] = []


# -- the lines --------------------------------------------------------------------------------------------

class _Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    self: list[Any]
    paired: list[list[StrictStr]]
    triplet: list[list[StrictStr]] | None = None


class _Metadata(_Strict):
    objective: _Objective


class _Provenance(_Strict):
    record: StrictStr
    input: StrictStr
    license: StrictStr


class PairLine(_Strict):
    """One published pair: the required keys of the contract (extra keys are allowed)."""

    id: StrictStr = Field(min_length=1)
    query: StrictStr
    document: StrictStr
    negatives: list[StrictStr]
    metadata: _Metadata
    dataset: StrictStr
    source: StrictStr
    provenance: _Provenance
    scores: dict[str, Any]

    @model_validator(mode="after")
    def _objective_matches_columns(self):
        objective = self.metadata.objective
        if objective.paired != [["query", "document"]]:
            raise ValueError('metadata.objective.paired must be [["query", "document"]]')
        if self.negatives and objective.triplet != [["query", "document", "negatives"]]:
            raise ValueError('a row with negatives must list the triplet ["query", "document", "negatives"]')
        if not self.negatives and objective.triplet is not None:
            raise ValueError("a row without negatives must not list a triplet objective")
        return self


class RejectLine(_Strict):
    id: StrictStr
    dataset: StrictStr
    stage: StrictStr
    reason: StrictStr
    detail: Any


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


# -- the checks -----------------------------------------------------------------------------------------------

class ObjectFailure(Exception):
    """The first thing found wrong with one object."""


@dataclass
class ShardResult:
    rows: int
    offsets: list[list[int]] | None = None


@dataclass
class Report:
    failures: dict[str, str] = field(default_factory=dict)
    objects_checked: int = 0
    objects_hashed: int = 0
    rows_checked: int = 0

    def fail(self, key: str, reason: str) -> None:
        self.failures.setdefault(key, reason)  # the first reason per object is the one reported

    def lines(self) -> list[str]:
        return [f"{key}: {reason}" for key, reason in sorted(self.failures.items())]


def _sorted_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if keys != sorted(keys):
        raise ValueError("keys are not sorted")
    return dict(pairs)


def _check_hash(path: Path, entry: FileEntry) -> None:
    size = path.stat().st_size
    if size != entry.bytes:
        raise ObjectFailure(f"size {size} bytes, manifest says {entry.bytes}")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != entry.sha256:
        raise ObjectFailure(f"sha256 {digest.hexdigest()} does not match the manifest's {entry.sha256}")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line with its newline) of a gzip file; gzip damage becomes an ObjectFailure."""
    number = 0
    try:
        with gzip.open(path, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                yield number, line
    except (OSError, EOFError, zlib.error) as error:
        raise ObjectFailure(f"not a valid gzip stream after line {number}: {error}") from None


def _parse_line(number: int, line: bytes) -> dict[str, Any]:
    if not line.endswith(b"\n"):
        raise ObjectFailure(f"line {number}: no trailing newline")
    text = line[:-1]
    if not text.isascii():
        raise ObjectFailure(f"line {number}: not ASCII")
    try:
        row = json.loads(text)
    except ValueError as error:
        raise ObjectFailure(f"line {number}: not JSON ({error})") from None
    if not isinstance(row, dict):
        raise ObjectFailure(f"line {number}: not a JSON object")
    if dumps_line(row).encode("ascii") != text:
        raise ObjectFailure(f"line {number}: not canonical JSON (sorted keys, compact, ASCII)")
    return row


def check_data_shard(path: Path, entry: ShardEntry, dataset: str) -> ShardResult:
    _check_hash(path, entry)
    offsets: list[list[int]] = []
    seen_ids: set[str] = set()
    position = 0
    for number, line in _lines(path):
        row = _parse_line(number, line)
        try:
            pair = PairLine.model_validate(row)
        except ValidationError as error:
            raise ObjectFailure(f"line {number}: {_first_error(error)}") from None
        if pair.dataset != dataset:
            raise ObjectFailure(f"line {number}: dataset {pair.dataset!r} in the folder of {dataset!r}")
        if pair.id in seen_ids:
            raise ObjectFailure(f"line {number}: id {pair.id} appears twice")
        seen_ids.add(pair.id)
        offsets.append([position, position + len(line)])
        position += len(line)
    if len(offsets) != entry.rows:
        raise ObjectFailure(f"{len(offsets)} rows, manifest says {entry.rows}")
    return ShardResult(rows=len(offsets), offsets=offsets)


def check_reject_shard(path: Path, entry: ShardEntry, dataset: str) -> ShardResult:
    _check_hash(path, entry)
    rows = 0
    for number, line in _lines(path):
        row = _parse_line(number, line)
        try:
            reject = RejectLine.model_validate(row)
        except ValidationError as error:
            raise ObjectFailure(f"line {number}: {_first_error(error)}") from None
        if reject.dataset != dataset:
            raise ObjectFailure(f"line {number}: dataset {reject.dataset!r} in the folder of {dataset!r}")
        rows += 1
    if rows != entry.rows:
        raise ObjectFailure(f"{rows} rows, manifest says {entry.rows}")
    return ShardResult(rows=rows)


class ReleaseVerifier:
    """Checks one release; ``run()`` fills ``report``."""

    def __init__(self, store: ReleaseStore, *, sample: int | None = None, seed: int | None = None,
                 workers: int = 4):
        self.store = store
        self.sample = sample
        self.seed = seed
        self.workers = max(1, workers)
        self.report = Report()

    # Each check raises ObjectFailure (the object's first fault) or StoreError (it cannot be read).
    def _guarded(self, key: str, check, *args) -> Any:
        try:
            return check(*args)
        except ObjectFailure as failure:
            self.report.fail(key, str(failure))
        except StoreError as error:
            if not self.store.exists(key):
                self.report.fail(key, "missing")
            else:
                self.report.fail(key, f"cannot be read: {error}")
        return None

    def _fetch_and_check(self, entry: FileEntry, check, *args) -> Any:
        def run():
            with self.store.local_path(entry.key) as path:
                self.report.objects_hashed += 1
                return check(path, entry, *args)
        return self._guarded(entry.key, run)

    def _check_listed_size(self, entry: FileEntry) -> None:
        def run():
            info = self.store.head(entry.key)
            if info is None:
                raise ObjectFailure("missing")
            if info.size != entry.bytes:
                raise ObjectFailure(f"size {info.size} bytes, manifest says {entry.bytes}")
            if info.sha256 is not None and info.sha256 != entry.sha256:
                raise ObjectFailure(f"stored sha256 {info.sha256} does not match the manifest's {entry.sha256}")
        self._guarded(entry.key, run)

    def _load_manifest(self) -> Manifest | None:
        if not self.store.exists(MANIFEST_KEY):
            self.report.fail(MANIFEST_KEY, "missing: the release is incomplete (or there is none here)")
            return None
        raw = self.store.get_bytes(MANIFEST_KEY)
        try:
            if not raw.isascii():
                raise ValueError("not ASCII")
            document = json.loads(raw, object_pairs_hook=_sorted_object)
        except ValueError as error:
            self.report.fail(MANIFEST_KEY, f"not valid JSON with sorted keys: {error}")
            return None
        try:
            manifest = Manifest.model_validate(document)
        except ValidationError as error:
            self.report.fail(MANIFEST_KEY, _first_error(error))
            return None
        problem = self._layout_problem(manifest)
        if problem:
            self.report.fail(MANIFEST_KEY, problem)
            return None
        return manifest

    @staticmethod
    def _layout_problem(manifest: Manifest) -> str | None:
        """The release layout is fixed: every listed key must sit where a reader expects it."""
        seen: set[str] = {MANIFEST_KEY}

        def claim(key: str, pattern: str) -> str | None:
            if not re.fullmatch(pattern, key) or any(part in ("", ".", "..") for part in key.split("/")):
                return f"key {key!r} does not follow the release layout"
            if key in seen:
                return f"key {key!r} is listed twice"
            seen.add(key)
            return None

        for name, dataset in manifest.datasets.items():
            if not _DATASET_NAME.match(name):
                return f"dataset name {name!r} is not a folder name"
            folder = re.escape(f"data/{name}/")
            for shard in dataset.shards:
                problem = claim(shard.key, folder + r"shard-\d{5}\.jsonl\.gz")
                if problem:
                    return problem
            problem = (claim(dataset.counts.key, folder + r"counts\.json")
                       or claim(dataset.offsets.key, folder + r"offsets\.json\.gz"))
            if problem:
                return problem
            if sum(shard.rows for shard in dataset.shards) != dataset.rows:
                return f"dataset {name!r}: shard rows add up to {sum(s.rows for s in dataset.shards)}, " \
                       f"not {dataset.rows}"
        for name, rejects in manifest.rejects.items():
            if not _DATASET_NAME.match(name):
                return f"rejects name {name!r} is not a folder name"
            for shard in rejects.shards:
                problem = claim(shard.key, re.escape(f"rejects/{name}/") + r"rejects-\d{5}\.jsonl\.gz")
                if problem:
                    return problem
            if sum(shard.rows for shard in rejects.shards) != rejects.rows:
                return f"rejects {name!r}: shard rows add up to {sum(s.rows for s in rejects.shards)}, " \
                       f"not {rejects.rows}"
        for entry in manifest.files:
            problem = claim(entry.key, r"(?!data/|rejects/)[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
            if problem:
                return problem
        return None

    def _check_counts(self, path: Path, entry: FileEntry, name: str, dataset: DatasetEntry) -> None:
        _check_hash(path, entry)
        try:
            counts = json.loads(path.read_bytes())
        except ValueError as error:
            raise ObjectFailure(f"not JSON: {error}") from None
        expected = {"count_per_file": {shard.key: shard.rows for shard in dataset.shards},
                    "total_count": dataset.rows}
        if not isinstance(counts, dict) or set(counts) != set(expected):
            raise ObjectFailure('expected exactly the keys "count_per_file" and "total_count"')
        if counts["count_per_file"] != expected["count_per_file"]:
            raise ObjectFailure("count_per_file does not match the manifest's shards")
        if counts["total_count"] != dataset.rows:
            raise ObjectFailure(f"total_count {counts['total_count']}, manifest says {dataset.rows}")

    def _check_offsets(self, path: Path, entry: FileEntry, dataset: DatasetEntry,
                       computed: dict[str, list[list[int]]]) -> None:
        _check_hash(path, entry)
        try:
            offsets = json.loads(gzip.decompress(path.read_bytes()))
        except (OSError, EOFError, zlib.error, ValueError) as error:
            raise ObjectFailure(f"not gzip-compressed JSON: {error}") from None
        if not isinstance(offsets, dict) or set(offsets) != {shard.key for shard in dataset.shards}:
            raise ObjectFailure("its shard keys differ from the manifest's shards")
        for shard in dataset.shards:
            listed = offsets[shard.key]
            if not isinstance(listed, dict) or len(listed) != shard.rows:
                raise ObjectFailure(f"{shard.key}: {len(listed) if isinstance(listed, dict) else 'no'} line "
                                    f"offsets for {shard.rows} rows")
            actual = computed.get(shard.key)
            if actual is None:
                continue  # shard not read in this (sampled) run, or itself failing
            for line, span in enumerate(actual):
                if listed.get(str(line)) != span:
                    raise ObjectFailure(f"{shard.key}: line {line} offsets {listed.get(str(line))}, "
                                        f"the shard has {span}")

    def run(self) -> Report:
        manifest = self._load_manifest()
        if manifest is None:
            return self.report
        data_shards = [(name, shard) for name, dataset in sorted(manifest.datasets.items())
                       for shard in dataset.shards]
        reject_shards = [(name, shard) for name, rejects in sorted(manifest.rejects.items())
                         for shard in rejects.shards]
        all_shard_keys = [shard.key for _, shard in data_shards + reject_shards]
        if self.sample is None or self.sample >= len(all_shard_keys):
            full = set(all_shard_keys)
        else:
            full = set(random.Random(self.seed).sample(all_shard_keys, self.sample))

        # Objects the manifest does not vouch for, where a reader would pick them up.
        listed = set(all_shard_keys) | {MANIFEST_KEY} | {entry.key for entry in manifest.files}
        for dataset in manifest.datasets.values():
            listed |= {dataset.counts.key, dataset.offsets.key}
        for prefix in ("data/", "rejects/"):
            for key in self.store.list_keys(prefix):
                if key not in listed:
                    self.report.fail(key, "not listed in manifest.json")

        def check_shard(item: tuple[str, str, ShardEntry]) -> tuple[str, ShardResult | None]:
            kind, name, shard = item
            if shard.key not in full:
                self._check_listed_size(shard)
                return shard.key, None
            check = check_data_shard if kind == "data" else check_reject_shard
            return shard.key, self._fetch_and_check(shard, check, name)

        work = [("data", name, shard) for name, shard in data_shards] + \
               [("rejects", name, shard) for name, shard in reject_shards]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            results = dict(pool.map(check_shard, work))
        for result in results.values():
            if result is not None:
                self.report.rows_checked += result.rows
        self.report.objects_checked += len(work)

        for name, dataset in sorted(manifest.datasets.items()):
            computed = {shard.key: results[shard.key].offsets for shard in dataset.shards
                        if results.get(shard.key) is not None}
            self._fetch_and_check(dataset.counts, self._check_counts, name, dataset)
            self._fetch_and_check(dataset.offsets, self._check_offsets, dataset, computed)
            self.report.objects_checked += 2
        for entry in manifest.files:
            self._fetch_and_check(entry, _check_hash)
            self.report.objects_checked += 1
        return self.report


def verify_release(uri: str, sample: int | None = None, seed: int | None = None) -> list[str]:
    """Failure lines (``KEY: first reason``), one per failing object; empty when the release checks out.

    Raises StoreError (one line) when the release cannot be reached at all.
    """
    return ReleaseVerifier(open_store(uri), sample=sample, seed=seed).run().lines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.verify",
                                     description="Re-check a published release against its manifest.")
    parser.add_argument("release", help="a release folder or s3://bucket/prefix")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="fully re-check only N randomly picked shards (the rest: presence and size)")
    parser.add_argument("--seed", type=int, help="seed for --sample's pick, to repeat a spot check")
    parser.add_argument("--workers", type=int, default=4, help="shards checked at once (default 4)")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 0:
        parser.error("--sample must be 0 or more")
    try:
        store = open_store(args.release)
        report = ReleaseVerifier(store, sample=args.sample, seed=args.seed, workers=args.workers).run()
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(f"FAIL {store.uri_for(line)}")
    if report.failures:
        print(f"{store.uri}: {len(report.failures)} object(s) failed verification", file=sys.stderr)
        return 1
    scope = "" if args.sample is None else f" (spot check: {report.objects_hashed} object(s) re-hashed)"
    print(f"OK {store.uri}: {report.objects_checked} objects, {report.rows_checked} rows checked{scope}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
