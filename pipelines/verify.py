"""Re-check a published release the way an auditor would: ``python -m pipelines.verify RELEASE [--sample N]``.

RELEASE is a local folder or ``s3://bucket/prefix`` (endpoint and keys from the AWS environment or profile).
Every object the manifest lists is fetched and compared with the manifest (size, sha256); every shard is
decompressed and each line checked (ASCII, canonical JSON with sorted keys, the pair or reject schema, its
dataset; in a triplet dataset, the manifest's negatives_per_row); row counts are checked against the manifest
and counts.json, line offsets against offsets.json.gz, both keyed as contrastors looks shards up from the
manifest's ``location`` (which must be where an S3 release is: a copy elsewhere fails until published there
with ``pipelines.publish``), and contrastors.yaml against the manifest's datasets;
objects under data/ or rejects/ that the manifest does not list are reported too (a trainer globbing the
folder would read them). Each failing object is named once, with the first thing found wrong (and the line).

``--sample N`` is a spot check: N shards, picked at random (``--seed`` to repeat a pick), are re-hashed and
parsed in full; every other object is only checked to exist with the listed size (and, on S3, the sha256
kept in its metadata), and the small index files are always checked in full.

``--rebuild`` also reproduces the release: the inputs the manifest lists are found (``--input URI ...``, as for
the build, or else where the release's run record ``runs/run-*.json`` says they were read), each is checked
against the manifest's sha256 first, then the build runs again in a subprocess, into a temporary
folder, with the manifest's source, configuration and skipped stages; every shard, index, rejects file, card
and report it writes is compared by sha256 with the manifest, and so are the manifest's other sections. Only
the same project commit is expected to give byte-identical files: a different one is warned about. Arguments
that verify does not know are passed to the build (Beam options: ``--direct_num_workers 2``). The rebuild
runs the recorded configuration, which may name local paths (the embedding model): rebuild a release from
someone else only after reading its manifest.

Exit status: 0 when everything checked is right, 1 when something is wrong (one line per failing object,
input or rebuilt file), 2 when the release cannot be read at all (bad URI, credentials, missing bucket) or the
rebuild cannot run (inputs not found, the build failing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from pipelines.cli import run_command
from pipelines.core.errors import PairCurationError, UsageError
from pipelines.core.records import SKIPPABLE_STAGES, dumps_line
from pipelines.release.bounded import (INDEX_BYTES_PER_ROW, INDEX_BYTES_PER_SHARD, INDEX_SLACK_BYTES, MAX_MANIFEST_BYTES,
                                      ObjectTooLarge, get_bounded, gunzip_bounded, gzip_lines)
from pipelines.release.location import (CONTRASTORS_CONFIG_KEY, LocationError, contrastors_config_bytes,
                                        dataset_weights, index_key,
                                        location_for)
from pipelines.release.store import ReleaseStore, StoreError
from pipelines.release.stores import open_store
from pipelines.core.schema import FORMAT_VERSION as RELEASE_FORMAT, MANIFEST_KEY, RUN_RECORD_PREFIX

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
    # Every row's number of negatives, when they all have the same (a triplet dataset when > 0).
    negatives_per_row: StrictInt | None = None
    counts: FileEntry
    offsets: FileEntry


class RejectsEntry(_Strict):
    rows: StrictInt = Field(ge=0)
    shards: list[ShardEntry]


class Manifest(_Strict):
    format: Literal[RELEASE_FORMAT]
    # Where the index files' keys resolve: "" (read from the release folder) or s3://bucket[/prefix].
    location: StrictStr = ""
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


class _Provenance(BaseModel):
    """One schema in every row of every dataset (what lets `datasets` load all shards in one call): the keys of
    ``pipelines.core.records.RELEASE_PROVENANCE_KEYS``, the source-specific rest as a JSON object in ``extra``."""
    model_config = ConfigDict(extra="forbid")
    record: StrictStr
    input: StrictStr
    license: StrictStr
    url: StrictStr
    post_ids: list[StrictStr]
    extra: StrictStr

    @model_validator(mode="after")
    def _extra_is_an_object(self):
        try:
            extra = json.loads(self.extra)
        except ValueError:
            extra = None
        if not isinstance(extra, dict):
            raise ValueError("provenance.extra must hold a JSON object")
        return self


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

class ObjectFailure(PairCurationError):
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
        # Streamed with a line limit: a gzip bomb (a huge line, or any other content) fails fast.
        for number, line in enumerate(gzip_lines(path), start=1):
            yield number, line
    except ObjectTooLarge as error:
        raise ObjectFailure(str(error)) from None
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


def check_data_shard(path: Path, entry: ShardEntry, dataset: str, negatives_per_row: int | None = None
                     ) -> ShardResult:
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
        if negatives_per_row is not None and len(pair.negatives) != negatives_per_row:
            raise ObjectFailure(f"line {number}: {len(pair.negatives)} negatives, the manifest says every row of "
                                f"{dataset!r} has {negatives_per_row}")
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
        self.manifest: Manifest | None = None

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
        try:
            raw = get_bounded(self.store, MANIFEST_KEY, MAX_MANIFEST_BYTES, "manifest")
        except ObjectTooLarge as error:
            self.report.fail(MANIFEST_KEY, str(error).replace(self.store.uri_for(MANIFEST_KEY) + " ", "", 1))
            return None
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
        if entry.bytes > INDEX_BYTES_PER_SHARD * len(dataset.shards) + INDEX_SLACK_BYTES:
            raise ObjectFailure(f"listed as {entry.bytes} bytes, more than a counts.json of "
                                f"{len(dataset.shards)} shards needs: not read")
        _check_hash(path, entry)
        try:
            counts = json.loads(path.read_bytes())
        except ValueError as error:
            raise ObjectFailure(f"not JSON: {error}") from None
        location = self.manifest.location
        expected = {"count_per_file": {index_key(location, shard.key): shard.rows for shard in dataset.shards},
                    "total_count": dataset.rows}
        if not isinstance(counts, dict) or set(counts) != set(expected):
            raise ObjectFailure('expected exactly the keys "count_per_file" and "total_count"')
        if counts["count_per_file"] != expected["count_per_file"]:
            raise ObjectFailure("count_per_file does not match the manifest's shards (keyed for "
                                f"{location or 'the release folder'})")
        if counts["total_count"] != dataset.rows:
            raise ObjectFailure(f"total_count {counts['total_count']}, manifest says {dataset.rows}")

    def _check_offsets(self, path: Path, entry: FileEntry, dataset: DatasetEntry,
                       computed: dict[str, list[list[int]]]) -> None:
        _check_hash(path, entry)
        try:
            offsets = json.loads(gunzip_bounded(path, INDEX_BYTES_PER_ROW * dataset.rows
                                                + INDEX_BYTES_PER_SHARD * len(dataset.shards) + INDEX_SLACK_BYTES))
        except ObjectTooLarge as error:
            raise ObjectFailure(f"{error} for {dataset.rows} rows") from None
        except (OSError, EOFError, zlib.error, ValueError) as error:
            raise ObjectFailure(f"not gzip-compressed JSON: {error}") from None
        location = self.manifest.location
        if not isinstance(offsets, dict) or set(offsets) != {index_key(location, s.key) for s in dataset.shards}:
            raise ObjectFailure("its shard keys differ from the manifest's shards (keyed for "
                                f"{location or 'the release folder'})")
        for shard in dataset.shards:
            listed = offsets[index_key(location, shard.key)]
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

    def _check_location(self, manifest: Manifest) -> str | None:
        """Index keys resolve only where the manifest says the release is read from: an S3 release must sit
        there (a local folder may be a downloaded copy, read for auditing)."""
        if not self.store.uri.startswith("s3://"):
            return None
        try:
            here = location_for(self.store.uri)
        except LocationError as error:
            return str(error)
        if manifest.location != here:
            return (f"indexed for {manifest.location or 'a release folder'}, but published at {here}: contrastors "
                    f"would not find its shards (publish with: python -m pipelines.publish SOURCE {here})")
        return None

    def _check_contrastors_config(self, path: Path, entry: FileEntry, manifest: Manifest) -> None:
        _check_hash(path, entry)
        datasets = {name: {"shards": [{"key": shard.key} for shard in dataset.shards],
                           "negatives_per_row": dataset.negatives_per_row}
                    for name, dataset in manifest.datasets.items()}
        weights = dataset_weights({"mixture": (manifest.model_extra or {}).get("mixture")})
        if path.read_bytes() != contrastors_config_bytes(manifest.location, datasets, weights):
            raise ObjectFailure("does not list exactly the manifest's datasets, shards and objectives for "
                                f"{manifest.location or 'the release folder'}")

    def run(self) -> Report:
        manifest = self._load_manifest()
        if manifest is None:
            return self.report
        self.manifest = manifest
        problem = self._check_location(manifest)
        if problem:
            self.report.fail(MANIFEST_KEY, problem)
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
            if kind == "data":
                return shard.key, self._fetch_and_check(shard, check_data_shard, name,
                                                        manifest.datasets[name].negatives_per_row)
            return shard.key, self._fetch_and_check(shard, check_reject_shard, name)

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
            if entry.key == CONTRASTORS_CONFIG_KEY:
                self._fetch_and_check(entry, self._check_contrastors_config, manifest)
            else:
                self._fetch_and_check(entry, _check_hash)
            self.report.objects_checked += 1
        return self.report


# -- --rebuild: the same build again, from the recorded inputs and configuration --------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent


class RebuildError(UsageError):
    """The rebuild cannot run (inputs not found, a manifest it cannot use, the build failing): one line."""


def _safe_input_name(name: Any) -> str:
    """An input name from the manifest becomes a path under the staging folder: it must stay inside it."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name \
            or any(part in ("", ".", "..") for part in name.split("/")):
        raise RebuildError(f"manifest.json lists an input named {name!r}, which is not a relative path")
    return name


def _manifest_inputs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = manifest.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RebuildError("manifest.json lists no inputs: nothing to rebuild from")
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("bytes"), int):
            raise RebuildError(f"manifest.json has an input entry without name, bytes and sha256: {entry!r:.200}")
        _safe_input_name(entry.get("name"))
    return inputs


def recorded_input_uris(store: ReleaseStore) -> dict[str, str]:
    """Input name -> the URI it was read from, from the release's run records (the newest record wins)."""
    uris: dict[str, str] = {}
    for key in sorted(store.list_keys(RUN_RECORD_PREFIX), reverse=True):
        if not re.fullmatch(r"runs/run-[0-9TZ]+(-[0-9a-f]{8})?\.json", key):
            continue
        try:
            record = json.loads(get_bounded(store, key, MAX_MANIFEST_BYTES, "run record"))
        except (StoreError, ValueError):
            continue
        for entry in record.get("inputs", []) if isinstance(record, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("uri"), str):
                uris.setdefault(entry["name"], entry["uri"])
    return uris


def _path_suffix(longer: str, shorter: str) -> bool:
    return longer == shorter or longer.endswith("/" + shorter)


def locate_inputs(names: list[str], store: ReleaseStore, overrides: list[str]) -> dict[str, str]:
    """Input name -> URI to read it from: ``overrides`` (files, folders, globs, matched by name or by the end
    of their path), or else the run records. RebuildError names the first input that cannot be found."""
    from sources.base import InputError, expand_inputs

    located: dict[str, str] = {}
    if overrides:
        try:
            files = expand_inputs(overrides)
        except InputError as error:
            raise RebuildError(str(error)) from None
        for name in names:
            exact = [item.uri for item in files if item.name == name]
            near = [item.uri for item in files if _path_suffix(item.name, name) or _path_suffix(name, item.name)]
            found = exact or near
            if len(found) > 1:
                raise RebuildError(f"input {name}: several --input files could be it ({', '.join(found[:3])})")
            if not found:
                raise RebuildError(f"input {name} is not among the --input files")
            located[name] = found[0]
        return located
    recorded = recorded_input_uris(store)
    for name in names:
        uri = recorded.get(name)
        if uri is None:
            raise RebuildError(f"input {name}: no run record says where it was read; pass --input URI")
        if "://" not in uri and not os.path.isfile(uri):
            raise RebuildError(f"input {name}: not found at {uri} (where it was read); pass --input URI")
        located[name] = uri
    return located


def check_inputs(inputs: list[dict[str, Any]], located: dict[str, str]) -> list[str]:
    """One line per input whose sha256 differs from the manifest's (each is read once)."""
    from sources.base import sha256_uri

    problems = []
    for entry in inputs:
        name, uri = entry["name"], located[entry["name"]]
        try:
            digest = sha256_uri(uri)
        except Exception as error:  # Beam wraps filesystem failures in its own types
            raise RebuildError(f"input {name}: cannot read {uri}: {str(error).splitlines()[0][:200]}") from None
        if digest != entry["sha256"]:
            problems.append(f"input {name} ({uri}): sha256 {digest}, manifest says {entry['sha256']}")
    return problems


def stage_inputs(located: dict[str, str], folder: Path) -> list[str]:
    """--input arguments that give every input its recorded name. A local file is hard-linked (or, across
    filesystems, copied) into a tree that mirrors its name (the build names a file by its path below the folder
    it was given; it refuses symbolic links that leave that folder); a remote one is passed as it is (the build
    names it by its base name)."""
    arguments: list[str] = []
    for name, uri in sorted(located.items()):
        if "://" in uri and not uri.startswith("file://"):
            arguments.append(uri)
            continue
        link = folder / _safe_input_name(name)
        link.parent.mkdir(parents=True, exist_ok=True)
        source = os.path.realpath(uri[len("file://"):] if uri.startswith("file://") else uri)
        try:
            os.link(source, link)
        except OSError:  # another filesystem, or a file we may not link
            shutil.copyfile(source, link)
        top = str(folder / name.split("/", 1)[0])
        if top not in arguments:
            arguments.append(top)
    return arguments


def _object_entries(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every object a manifest vouches for (shards, indexes, rejects, card, report) -> its entry."""
    entries: dict[str, dict[str, Any]] = {}
    for dataset in (manifest.get("datasets") or {}).values():
        for entry in dataset.get("shards", []) + [dataset.get("counts"), dataset.get("offsets")]:
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                entries[entry["key"]] = entry
    for rejects in (manifest.get("rejects") or {}).values():
        for entry in rejects.get("shards", []):
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                entries[entry["key"]] = entry
    for entry in manifest.get("files") or []:
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            entries[entry["key"]] = entry
    return entries


def compare_rebuild(manifest: dict[str, Any], rebuilt: Path) -> list[str]:
    """Differences between a manifest and the release rebuilt in the folder ``rebuilt``, one line each: every
    object by the sha256 of the rebuilt file, then each manifest section (the project section aside)."""
    from pipelines.release.store import sha256_file

    rebuilt_manifest = json.loads((rebuilt / MANIFEST_KEY).read_bytes())
    expected, produced = _object_entries(manifest), _object_entries(rebuilt_manifest)
    lines = []
    for key in sorted(set(expected) | set(produced)):
        if key not in produced:
            lines.append(f"{key}: in the manifest, not produced by the rebuild")
        elif key not in expected:
            lines.append(f"{key}: produced by the rebuild, not in the manifest")
        else:
            digest, listed = sha256_file(rebuilt / key), expected[key].get("sha256")
            if digest != listed:
                lines.append(f"{key}: the rebuild gives sha256 {digest}, the manifest says {listed}")
    for section in sorted((set(manifest) | set(rebuilt_manifest)) - {"project"}):
        if manifest.get(section) != rebuilt_manifest.get(section):
            lines.append(f"{MANIFEST_KEY}: section {section!r} differs from the rebuild's")
    return lines


def _index_rebuild_for(release: Path, location: str) -> None:
    """The rebuild is a local folder; a release published elsewhere carries index files for its location:
    rewrite the rebuilt ones the way pipelines.publish does, so that like is compared with like."""
    from pipelines.release.location import LocationError
    from pipelines.release.relocate import relocate
    from pipelines.release.writer import json_bytes

    store = open_store(str(release))
    try:
        with tempfile.TemporaryDirectory(prefix="rebuild-index-") as workdir:
            relocated, rewritten = relocate(store, json.loads(store.get_bytes(MANIFEST_KEY)), location,
                                            Path(workdir))
            for key, path in rewritten.items():
                store.put_file(key, path)
    except (LocationError, StoreError, ValueError) as error:
        raise RebuildError(f"cannot index the rebuild for {location}: {error}") from None
    store.put_bytes(MANIFEST_KEY, json_bytes(relocated))


def _commit_warning(manifest: dict[str, Any]) -> str | None:
    from pipelines.build import project_identity

    built = (manifest.get("project") or {}).get("commit")
    here = project_identity()["commit"]
    if built != here:
        return (f"warning: the release was built at commit {built}, this checkout is at {here}: differences may "
                "come from the code, not the data")
    return None


def rebuild_release(store: ReleaseStore, *, overrides: list[str] | None = None, beam_args: list[str] | None = None,
                    workdir: Path | None = None, log=print) -> list[str]:
    """Rebuilds a release from its recorded inputs and configuration; returns the differences, one line each
    (inputs that changed are named and nothing is built). Raises RebuildError when it cannot run."""
    import yaml

    try:
        manifest = json.loads(get_bounded(store, MANIFEST_KEY, MAX_MANIFEST_BYTES, "manifest"))
    except (StoreError, ValueError) as error:
        raise RebuildError(f"cannot read {MANIFEST_KEY}: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("source"), str) \
            or not isinstance(manifest.get("config"), dict):
        raise RebuildError(f"{MANIFEST_KEY} lacks the source or configuration to rebuild from")
    if manifest.get("mixture"):
        raise RebuildError("--rebuild does not rebuild mixture releases yet: build the mixture file again and "
                           "compare the manifests")
    inputs = _manifest_inputs(manifest)
    located = locate_inputs([entry["name"] for entry in inputs], store, list(overrides or []))
    changed = check_inputs(inputs, located)
    if changed:
        return changed
    warning = _commit_warning(manifest)
    if warning:
        log(warning)

    keep = workdir is not None
    if keep and workdir.exists() and any(workdir.iterdir()):
        raise RebuildError(f"--rebuild-dir {workdir} is not empty")
    folder = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="pair-curation-rebuild-"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "config.yaml"
        config = json.loads(json.dumps(manifest["config"]))
        # Stages that ran are turned on explicitly: one off by default (decontaminate) would otherwise not run.
        for stage in SKIPPABLE_STAGES:
            if stage not in (manifest.get("skipped_stages") or []) and isinstance(config.get(stage), dict):
                config[stage]["enabled"] = True
        config_path.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
        skips = [part for stage in manifest.get("skipped_stages") or [] for part in ("--skip", str(stage))]
        command = [sys.executable, "-m", "pipelines.build", "--source", manifest["source"],
                   "--config", str(config_path), "--output", str(folder / "release"), *skips,
                   *[f"--input={argument}" for argument in stage_inputs(located, folder / "inputs")],
                   *(beam_args or [])]
        log(f"rebuilding {manifest['source']} from {len(inputs)} input(s) into {folder / 'release'}")
        # The build's own messages go to stderr as they come (a large rebuild takes as long as the build).
        result = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise RebuildError(f"the rebuild failed (build exit status {result.returncode}; its error is above)")
        if manifest.get("location"):
            _index_rebuild_for(folder / "release", str(manifest["location"]))
        return compare_rebuild(manifest, folder / "release")
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def verify_release(uri: str, sample: int | None = None, seed: int | None = None) -> list[str]:
    """Failure lines (``KEY: first reason``), one per failing object; empty when the release checks out.

    Raises StoreError (one line) when the release cannot be reached at all.
    """
    return ReleaseVerifier(open_store(uri), sample=sample, seed=seed).run().lines()


def _verify_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.verify",
                                     description="Re-check a published release against its manifest.")
    parser.add_argument("release", help="a release folder or s3://bucket/prefix")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="fully re-check only N randomly picked shards (the rest: presence and size)")
    parser.add_argument("--seed", type=int, help="seed for --sample's pick, to repeat a spot check")
    parser.add_argument("--workers", type=int, default=4, help="shards checked at once (default 4)")
    parser.add_argument("--rebuild", action="store_true",
                        help="also build the release again from its recorded inputs and configuration and compare "
                             "every file's sha256 with the manifest")
    parser.add_argument("--input", action="append", default=[], metavar="URI",
                        help="with --rebuild: where the inputs are (files, folders, globs; matched to the "
                             "manifest's input names); default: where the run record says they were read")
    parser.add_argument("--rebuild-dir", metavar="DIR", type=Path,
                        help="with --rebuild: build into this empty folder and keep it (default: a temporary one)")
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and not args.rebuild:
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if (args.input or args.rebuild_dir) and not args.rebuild:
        parser.error("--input and --rebuild-dir go with --rebuild")
    if args.sample is not None and args.sample < 0:
        parser.error("--sample must be 0 or more")
    store = open_store(args.release)
    report = ReleaseVerifier(store, sample=args.sample, seed=args.seed, workers=args.workers).run()
    for line in report.lines():
        print(f"FAIL {store.uri_for(line)}")
    rebuild_lines: list[str] = []
    if args.rebuild and MANIFEST_KEY not in report.failures:
        try:
            rebuild_lines = rebuild_release(store, overrides=args.input, beam_args=beam_args,
                                            workdir=args.rebuild_dir, log=lambda line: print(line, file=sys.stderr))
        except (RebuildError, StoreError) as error:
            raise RebuildError(f"rebuild: {error}") from None
        for line in rebuild_lines:
            print(f"FAIL rebuild: {line}")
    if report.failures:
        print(f"{store.uri}: {len(report.failures)} object(s) failed verification", file=sys.stderr)
    if rebuild_lines:
        print(f"{store.uri}: {len(rebuild_lines)} difference(s) from the rebuild", file=sys.stderr)
    if report.failures or rebuild_lines:
        return 1
    scope = "" if args.sample is None else f" (spot check: {report.objects_hashed} object(s) re-hashed)"
    rebuilt = "; the rebuild gives the same files" if args.rebuild else ""
    print(f"OK {store.uri}: {report.objects_checked} objects, {report.rows_checked} rows checked{scope}{rebuilt}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(_verify_command, argv)


if __name__ == "__main__":
    sys.exit(main())
