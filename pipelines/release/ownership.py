"""Who may write a release, and which of its objects the project wrote.

One writer per release: a run claims its destination before writing anything, by creating ``runs/claim.json``
only if it is absent (S3 ``If-None-Match: *``, as R2 supports; a local ``link()``, atomic like ``O_EXCL`` but never
exposing a half-written claim). A second run meets the claim and stops with one line naming the holder (host,
pid, run id, start time: nothing secret). A claim left by a dead run is cleared only with ``--break-claim``.
Before the manifest is committed the finalizer checks that the claim is still this run's and that every object
the manifest lists holds the bytes this run wrote.

What the project wrote: the keys an earlier manifest or run record of this project lists (the manifest's objects;
a record's ``wrote``, ``adopted``, ``prior_manifest_keys``). Clean-up removes only those; anything else is left
alone and reported. A run record
keeps the keys present when its run claimed the release (``preexisting``), so keys a killed run left behind can
be attributed to it by the next run that holds the claim (``adopted``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
import uuid
from typing import Any, Iterable

from pipelines.release.store import AlreadyExists, ReleaseStore, StoreError

CLAIM_KEY = "runs/claim.json"
RUN_RECORD_PATTERN = re.compile(r"runs/run-[0-9TZ]+(-[0-9a-f]{8})?\.json")
# Claims, run records and manifests are small; a bigger one is not ours (or hostile) and is not parsed.
MAX_RECORD_BYTES = 64 << 20
# Where readers (and verify) look for release rows: an object there that the manifest does not list makes
# the release fail verification.
RELEASE_ROW_PREFIXES = ("data/", "rejects/")


class ClaimHeld(StoreError):
    """Another run holds the release's claim."""


def new_run_id() -> str:
    return uuid.uuid4().hex


def read_small_json(store: ReleaseStore, key: str, limit: int = MAX_RECORD_BYTES) -> Any:
    """A small JSON object from the store, or None when it is absent, too large or not JSON."""
    info = store.head(key)
    if info is None or info.size > limit:
        return None
    try:
        return json.loads(store.get_bytes(key))
    except (StoreError, ValueError):
        return None


def describe_claim(claim: Any) -> str:
    if not isinstance(claim, dict):
        return "an unreadable claim"
    fields = [f"run {str(claim.get('run_id', '?'))[:32]}", f"host {str(claim.get('host', '?'))[:64]}",
              f"pid {str(claim.get('pid', '?'))[:12]}", f"since {str(claim.get('started_utc', '?'))[:32]}"]
    return ", ".join(fields)


def acquire_claim(store: ReleaseStore, run_id: str, *, break_claim: bool = False) -> dict[str, Any]:
    """Create the claim object or raise ClaimHeld naming the holder. ``break_claim`` first removes a stale one."""
    claim = {"run_id": run_id, "host": platform.node(), "pid": os.getpid(),
             "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    body = (json.dumps(claim, sort_keys=True) + "\n").encode()
    if break_claim and store.exists(CLAIM_KEY):
        store.delete(CLAIM_KEY)
    try:
        store.put_bytes(CLAIM_KEY, body, content_type="application/json", if_none_match=True)
    except AlreadyExists:
        holder = read_small_json(store, CLAIM_KEY, 1 << 16)
        raise ClaimHeld(f"{store.uri} is being written by another build ({describe_claim(holder)}); wait for it, "
                        "or pass --break-claim if that run is dead") from None
    return claim


def claim_is_ours(store: ReleaseStore, run_id: str) -> bool:
    claim = read_small_json(store, CLAIM_KEY, 1 << 16)
    return isinstance(claim, dict) and claim.get("run_id") == run_id


def release_claim(store: ReleaseStore, run_id: str) -> None:
    """Remove the claim if it is still this run's (never another run's that broke it)."""
    if claim_is_ours(store, run_id):
        store.delete(CLAIM_KEY)


def row_keys(store: ReleaseStore) -> set[str]:
    return {key for prefix in RELEASE_ROW_PREFIXES for key in store.list_keys(prefix)}


def manifest_keys(manifest: Any) -> set[str]:
    from pipelines.release.manifest import release_keys

    if not isinstance(manifest, dict):
        return set()
    try:
        return {key for key in release_keys(manifest) if isinstance(key, str)}
    except (KeyError, TypeError, AttributeError):
        return set()


def _string_list(value: Any) -> set[str]:
    return {item for item in value if isinstance(item, str)} if isinstance(value, list) else set()


def run_records(store: ReleaseStore) -> list[tuple[str, dict[str, Any]]]:
    """(key, record) of every run record, oldest first."""
    records = []
    for key in sorted(store.list_keys("runs/")):
        if RUN_RECORD_PATTERN.fullmatch(key):
            record = read_small_json(store, key)
            if isinstance(record, dict):
                records.append((key, record))
    return records


def owned_keys(store: ReleaseStore, manifest: Any = None) -> set[str]:
    """Every key that the current manifest or a run record of this project says the project wrote."""
    from pipelines.release.manifest import MANIFEST_KEY

    owned = manifest_keys(manifest if manifest is not None else read_small_json(store, MANIFEST_KEY))
    for _, record in run_records(store):
        for field in ("wrote", "adopted", "prior_manifest_keys"):
            owned |= _string_list(record.get(field))
    return owned


def adopt_unfinished(store: ReleaseStore, present: set[str]) -> set[str]:
    """Keys the newest unfinished run (killed: it never recorded what it wrote) left behind: present now but
    absent when it claimed the release. Only one run holds the claim at a time, so they are that run's."""
    records = run_records(store)
    if not records:
        return set()
    _, newest = records[-1]
    if newest.get("finished") or not isinstance(newest.get("preexisting"), list):
        return set()
    return present - _string_list(newest["preexisting"])


def mismatched_objects(store: ReleaseStore, entries: Iterable[dict[str, Any]]) -> list[str]:
    """Keys among ``entries`` ({key, bytes, sha256}) whose stored object is absent or not those bytes.

    Local objects are hashed again; S3 objects are compared by size and the sha256 this project stores in
    their metadata, which a write by anyone else (another run, another tool) replaces or drops."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.release.store import LocalStore, sha256_file

    def differs(entry: dict[str, Any]) -> bool:
        info = store.head(entry["key"])
        if info is None or info.size != entry["bytes"]:
            return True
        digest = sha256_file(store.root / entry["key"]) if isinstance(store, LocalStore) else info.sha256
        return digest != entry["sha256"]

    entries = list(entries)
    with ThreadPoolExecutor(max_workers=8) as pool:  # one HEAD (or local hash) each, overlapped
        flags = list(pool.map(differs, entries))
    return [entry["key"] for entry, flag in zip(entries, flags) if flag]


def manifest_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every {key, bytes, sha256} a manifest lists (shards, indexes, reject shards, other files)."""
    entries = []
    for summary in manifest.get("datasets", {}).values():
        entries.extend(summary["shards"])
        entries.extend((summary["counts"], summary["offsets"]))
    for summary in manifest.get("rejects", {}).values():
        entries.extend(summary["shards"])
    entries.extend(manifest.get("files", []))
    return entries


def sample_keys(keys: Iterable[str], limit: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
