"""A release's index files and contrastors.yaml for another location, and the manifest that vouches for them.

Only the location-dependent objects change (counts.json, offsets.json.gz, contrastors.yaml and their
manifest entries, the manifest's ``location``); shards, rejects, card and report are the same bytes. The new
files are the bytes a build writing straight to that location gives: the same writer functions, the same
gzip level, line lengths re-read from the shards themselves.
"""

from __future__ import annotations

import copy
import gzip
import os
from array import array
from pathlib import Path
from typing import Any

from pipelines.release.location import CONTRASTORS_CONFIG_KEY, contrastors_config_bytes, dataset_weights
from pipelines.release.store import ReleaseStore, sha256_file
from pipelines.release.writer import counts_document, file_entry, json_bytes, write_offsets_gz

DEFAULT_GZIP_LEVEL = 6


def shard_line_lengths(path: Path) -> array:
    """Each line's byte length (newline included) in a shard's decompressed stream."""
    lengths = array("I")
    with gzip.open(path, "rb") as stream:
        for line in stream:
            lengths.append(len(line))
    return lengths


def relocate(store: ReleaseStore, manifest: dict[str, Any], location: str, workdir: Path
             ) -> tuple[dict[str, Any], dict[str, Path]]:
    """(the manifest for ``location``, release key -> local file holding the rewritten object)."""
    gzip_level = int(((manifest.get("config") or {}).get("release") or {}).get("gzip_level", DEFAULT_GZIP_LEVEL))
    relocated = copy.deepcopy(manifest)
    relocated["location"] = location
    written: dict[str, Path] = {}
    for name, summary in sorted(relocated.get("datasets", {}).items()):
        shards = []
        for shard in summary["shards"]:
            with store.local_path(shard["key"]) as path:
                lengths = shard_line_lengths(path)
            if len(lengths) != shard["rows"]:
                raise ValueError(f"{shard['key']} has {len(lengths)} rows, the manifest says {shard['rows']}")
            shards.append({"key": shard["key"], "rows": shard["rows"], "line_lengths": lengths.tobytes()})
        counts = json_bytes(counts_document(shards, location))
        counts_path = workdir / f"{name}.counts.json"
        counts_path.write_bytes(counts)
        offsets_path = workdir / f"{name}.offsets.json.gz"
        write_offsets_gz(shards, str(offsets_path), gzip_level, location)
        summary["counts"] = file_entry(summary["counts"]["key"], counts)
        summary["offsets"] = {"key": summary["offsets"]["key"], "bytes": os.path.getsize(offsets_path),
                              "sha256": sha256_file(offsets_path)}
        written[summary["counts"]["key"]] = counts_path
        written[summary["offsets"]["key"]] = offsets_path
    config = contrastors_config_bytes(location, relocated.get("datasets", {}), dataset_weights(relocated))
    config_path = workdir / "contrastors.yaml"
    config_path.write_bytes(config)
    written[CONTRASTORS_CONFIG_KEY] = config_path
    files = [entry for entry in relocated.get("files", []) if entry.get("key") != CONTRASTORS_CONFIG_KEY]
    files.append(file_entry(CONTRASTORS_CONFIG_KEY, config))
    relocated["files"] = sorted(files, key=lambda entry: entry["key"])
    return relocated, written
