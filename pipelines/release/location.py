"""Where a release is read from, and how contrastors finds its shards there.

contrastors' loader (nomic-ai/contrastors, ``src/contrastors/dataset/text_text_loader.py`` at 613ddfd; read,
not copied) looks a shard up in its folder's ``counts.json`` and ``offsets.json.gz`` by a *normalized URL*:
the shard URL split on ``/``, its last four parts when there are six or more, else its last three (the split of
``s3://B/x/y`` counts ``s3:`` and an empty part). It drops ``s3://`` from the index files' keys before the
look-up. So a key depends on where the release is read from:

- a release folder read from its root (relative URLs ``data/D/shard-00000.jsonl.gz``): 3 parts, the key is the
  release-relative path itself. This is the *location* ``""``, what a local build writes;
- ``s3://B`` (``s3://B/data/D/shard-00000.jsonl.gz``, 6 parts): ``B/data/D/shard-00000.jsonl.gz``;
- ``s3://B/a/b`` (8 parts): ``b/data/D/shard-00000.jsonl.gz``.

A release records its location in the manifest; ``pipelines.publish`` rewrites the index files (and
``contrastors.yaml``) for another one.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import yaml

CONTRASTORS_CONFIG_KEY = "contrastors.yaml"
_SHARD_NUMBER = re.compile(r"^data/(?P<dataset>[^/]+)/shard-(?P<number>\d{5})\.jsonl\.gz$")


class LocationError(ValueError):
    """A destination a release cannot be indexed for (one line)."""


def location_for(uri: str) -> str:
    """The location a release written to ``uri`` is indexed for: ``s3://bucket[/prefix]`` without a trailing
    slash, or ``""`` for a local folder (read from its root, so the keys do not depend on where it lies)."""
    if not uri.startswith("s3://"):
        return ""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise LocationError(f"not an S3 release URI: {uri!r} (expected s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def shard_url(location: str, key: str) -> str:
    """The URL a trainer reads the release object ``key`` at."""
    return f"{location}/{key}" if location else key


def normalize_url(url: str) -> str:
    """contrastors' look-up key for a shard URL (its rule, written from the description above)."""
    parts = url.split("/")
    kept = parts[-4:] if len(parts) >= 6 else parts[-3:]
    return "/".join(kept).replace("s3://", "")


def index_key(location: str, key: str) -> str:
    """The key of release object ``key`` in counts.json / offsets.json.gz for a release at ``location``."""
    return normalize_url(shard_url(location, key))


def shard_glob(location: str, shard_keys: Iterable[str]) -> str:
    """One brace pattern naming exactly the shards (webdataset's expansion: ``{00000..00004}`` or a comma
    list when numbers are missing), as contrastors' ``bucket``."""
    numbers, folders = [], set()
    for key in shard_keys:
        match = _SHARD_NUMBER.match(key)
        if not match:
            raise LocationError(f"{key!r} is not a data shard key")
        numbers.append(match["number"])
        folders.add(match["dataset"])
    if len(folders) != 1 or not numbers:
        raise LocationError("a shard pattern needs the shards of exactly one dataset")
    numbers = sorted(numbers)
    if len(numbers) == 1:
        pattern = numbers[0]
    elif [int(n) for n in numbers] == list(range(int(numbers[0]), int(numbers[0]) + len(numbers))):
        pattern = "{%s..%s}" % (numbers[0], numbers[-1])
    else:
        pattern = "{%s}" % ",".join(numbers)
    return shard_url(location, f"data/{folders.pop()}/shard-{pattern}.jsonl.gz")


def objective_of(negatives_per_row: int | None) -> dict[str, Any]:
    """contrastors' objective for a dataset: triplet when every row has the same, non-zero number of
    negatives, paired otherwise."""
    if negatives_per_row:
        return {"type": "triplet", "columns": ["query", "document", "negatives"]}
    return {"type": "paired", "columns": ["query", "document"]}


def dataset_weights(manifest: dict[str, Any]) -> dict[str, float]:
    """A mixture release's sampling weight per dataset (its source's ``weight``); {} for a one-source build."""
    mixture = manifest.get("mixture") if isinstance(manifest, dict) else None
    weights: dict[str, float] = {}
    for entry in (mixture or {}).get("sources", []) if isinstance(mixture, dict) else []:
        for dataset in entry.get("datasets", []):
            weights[dataset] = float(entry.get("weight", 1.0))
    return weights


def contrastors_config(location: str, datasets: dict[str, dict[str, Any]],
                       weights: dict[str, float] | None = None) -> dict[str, Any]:
    """The data config contrastors' trainer reads (its ``data_args.input_shards``): one entry per dataset with
    only the keys it accepts (name, bucket, objective, and weight for a mixture's datasets)."""
    entries = []
    for name, summary in sorted(datasets.items()):
        if not summary["shards"]:
            continue
        entry = {"name": name,
                 "bucket": shard_glob(location, [shard["key"] for shard in summary["shards"]]),
                 "objective": objective_of(summary.get("negatives_per_row"))}
        if weights and name in weights:
            entry["weight"] = weights[name]
        entries.append(entry)
    return {"datasets": entries}


def contrastors_config_bytes(location: str, datasets: dict[str, dict[str, Any]],
                             weights: dict[str, float] | None = None) -> bytes:
    header = ("# contrastors data config (data_args.input_shards). Generated by pair-curation for a release "
              f"read from {location or 'its own folder (run the trainer from the release root)'}.\n")
    body = yaml.safe_dump(contrastors_config(location, datasets, weights), sort_keys=True, allow_unicode=False,
                          default_flow_style=False)
    return (header + body).encode("ascii")
