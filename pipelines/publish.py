"""Publish a built release to S3 / R2: ``python -m pipelines.publish RELEASE s3://bucket[/prefix] [--overwrite]``.

contrastors finds a shard by a key cut from its URL (see ``pipelines.release.location``), so a release's
index files depend on where it is read from. A local build is indexed for its own folder; publishing it
elsewhere rewrites counts.json, offsets.json.gz and contrastors.yaml for the destination (the bytes a build
with ``--output`` there would have written), uploads everything else unchanged, and commits manifest.json last
with If-None-Match, as the build does. Run ``python -m pipelines.verify`` on the destination afterwards.

Exit status: 0 when the release is published, 2 for a bad command line, an incomplete source release, a
destination that already holds a release (without --overwrite) or an unreachable store (one line).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pipelines.core.errors import UsageError
from pipelines.release import ownership
from pipelines.release.location import LocationError, location_for
from pipelines.release.manifest import MANIFEST_KEY, release_keys
from pipelines.release.relocate import relocate
from pipelines.release.store import AlreadyExists, StoreError, sha256_file
from pipelines.release.stores import open_store
from pipelines.release.writer import JSON, json_bytes


def _unchanged_entries(manifest: dict) -> list[dict]:
    """Objects published as they are: shards, rejects, card, report (not the location-dependent ones)."""
    entries = []
    for summary in manifest.get("datasets", {}).values():
        entries.extend(summary["shards"])
    for summary in manifest.get("rejects", {}).values():
        entries.extend(summary["shards"])
    entries.extend(manifest.get("files", []))
    return entries


def publish(source_uri: str, destination_uri: str, *, overwrite: bool = False, log=print) -> dict:
    """Publishes the release at ``source_uri`` to ``destination_uri``; returns the destination's manifest."""
    if not destination_uri.startswith("s3://"):
        raise UsageError(f"the destination must be s3://bucket[/prefix], not {destination_uri!r}")
    try:
        location = location_for(destination_uri)
        source, destination = open_store(source_uri), open_store(destination_uri)
        if not source.exists(MANIFEST_KEY):
            raise UsageError(f"{source.uri_for(MANIFEST_KEY)} does not exist: not a complete release")
        manifest = json.loads(source.get_bytes(MANIFEST_KEY))
        # What the project wrote there before (a replaced release's manifest, run records): the only objects
        # a clean-up may remove.
        owned = ownership.owned_keys(destination)
        if destination.exists(MANIFEST_KEY):
            if not overwrite:
                raise UsageError(f"a complete release already exists at {destination.uri_for(MANIFEST_KEY)}; "
                                 "pass --overwrite to replace it")
            destination.delete(MANIFEST_KEY)  # visibly incomplete while it is replaced
        with tempfile.TemporaryDirectory(prefix="publish-") as workdir:
            relocated, rewritten = relocate(source, manifest, location, Path(workdir))
            for entry in _unchanged_entries(relocated):
                if entry["key"] in rewritten:
                    continue
                with source.local_path(entry["key"]) as path:
                    # What goes out is what the manifest vouches for, or nothing.
                    if sha256_file(path) != entry["sha256"]:
                        raise UsageError(f"{source.uri_for(entry['key'])} does not match its manifest entry; "
                                         "run python -m pipelines.verify on the release")
                    destination.put_file(entry["key"], path, sha256=entry["sha256"])
            for key, path in sorted(rewritten.items()):
                destination.put_file(key, path)
            # Leftovers under data/ and rejects/ would be read by a trainer's glob: the project's own are
            # removed; anything else is left alone and the release is not committed.
            wanted = release_keys(relocated)
            present = ownership.row_keys(destination)
            foreign = present - wanted - owned
            if foreign:
                raise UsageError(f"{len(foreign)} object(s) not written by this project are under data/ or "
                                 f"rejects/ of {destination.uri} ({ownership.sample_keys(foreign)}); left alone, "
                                 "release not committed")
            for key in sorted((present - wanted) & owned):
                destination.delete(key)
            destination.put_bytes(MANIFEST_KEY, json_bytes(relocated), content_type=JSON,
                                  if_none_match=not overwrite)
    except AlreadyExists:
        raise UsageError(f"{destination_uri}/{MANIFEST_KEY} appeared while publishing; not overwritten "
                         "(use --overwrite)") from None
    except (StoreError, LocationError, ValueError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    log(f"published {source_uri} -> {destination.uri} (indexed for {location})")
    return relocated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.publish",
                                     description="Publish a built release to S3 / R2, indexed for contrastors there.")
    parser.add_argument("release", help="the release to publish: a folder (or s3://...)")
    parser.add_argument("destination", help="s3://bucket[/prefix]; endpoint and keys from the AWS environment")
    parser.add_argument("--overwrite", action="store_true", help="replace a release already at the destination")
    args = parser.parse_args(argv)
    try:
        publish(args.release, args.destination, overwrite=args.overwrite)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
