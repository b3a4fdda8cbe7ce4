"""The funnel (what came in, went out and was dropped, per stage and dataset) and the manifest.

The manifest holds nothing that varies between two runs of the same inputs and configuration (no
timestamps, hostnames or absolute output paths), so it is byte-identical across runs and runners.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pipelines.core.errors import PipelineError
from pipelines.core.schema import FORMAT_VERSION, MANIFEST_KEY

FORMAT = FORMAT_VERSION


class UnaccountedRows(PipelineError):
    """Rows that are neither in a shard nor in the rejects: the pipeline lost data. Never ignored."""


def compute_funnel(read_pairs: dict[str, int], reject_counts: list[tuple[str, str, str, int]],
                   active_stages: list[str], final_rows: dict[str, int]) -> dict[str, Any]:
    """Per dataset and in total: for each active stage, rows in, out, and dropped by reason.

    ``read`` starts with the input rows (pairs read + read rejects); each later stage takes the previous
    stage's output. The last stage's output must equal the rows published: otherwise UnaccountedRows.
    """
    dropped: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for dataset, stage, reason, count in reject_counts:
        dropped[dataset][stage][reason] += count
    datasets = sorted(set(read_pairs) | set(dropped) | set(final_rows))
    stages = ["read"] + [stage for stage in active_stages if stage != "read"]  # in graph (registry) order
    unknown_stages = {stage for per_stage in dropped.values() for stage in per_stage} - set(stages)
    per_dataset: dict[str, list[dict[str, Any]]] = {}
    total: dict[str, dict[str, Any]] = {stage: {"stage": stage, "in": 0, "out": 0, "dropped": defaultdict(int)}
                                       for stage in stages}
    problems = []
    for dataset in datasets:
        rows = []
        read_dropped = sum(dropped[dataset]["read"].values())
        current = read_pairs.get(dataset, 0) + read_dropped
        for stage in stages:
            reasons = dict(sorted(dropped[dataset][stage].items()))
            out = current - sum(reasons.values())
            rows.append({"stage": stage, "in": current, "out": out, "dropped": reasons})
            totals = total[stage]
            totals["in"] += current
            totals["out"] += out
            for reason, count in reasons.items():
                totals["dropped"][reason] += count
            current = out
        per_dataset[dataset] = rows
        published = final_rows.get(dataset, 0)
        if published != current:
            problems.append(f"{dataset}: {current} rows expected after the last stage, {published} published")
    if unknown_stages:
        problems.append(f"rejects from stages not in this run: {sorted(unknown_stages)}")
    if problems:
        raise UnaccountedRows("; ".join(problems))
    return {
        "stages": stages,
        "total": [{**row, "dropped": dict(sorted(row["dropped"].items()))} for row in total.values()],
        "per_dataset": per_dataset,
    }


def build_manifest(*, static: dict[str, Any], funnel: dict[str, Any], dataset_summaries: list[dict[str, Any]],
                   reject_summaries: list[dict[str, Any]], stage_reports: list[dict[str, Any]],
                   files: list[dict[str, Any]], location: str = "") -> dict[str, Any]:
    """``location``: where the index files' keys resolve (see ``pipelines.release.location``)."""
    reports: dict[str, Any] = {}
    for report in sorted(stage_reports, key=lambda r: r.get("stage", "")):
        reports[report.get("stage", "unknown")] = report
    return {
        **static,
        "format": FORMAT,
        "location": location,
        "funnel": funnel,
        "stage_reports": reports,
        "datasets": {s["dataset"]: {k: v for k, v in s.items() if k != "dataset"}
                     for s in sorted(dataset_summaries, key=lambda s: s["dataset"])},
        "rejects": {s["dataset"]: {k: v for k, v in s.items() if k != "dataset"}
                    for s in sorted(reject_summaries, key=lambda s: s["dataset"])},
        "files": sorted(files, key=lambda f: f["key"]),
    }


def release_keys(manifest: dict[str, Any]) -> set[str]:
    """Every object key a manifest vouches for (itself included)."""
    keys = {MANIFEST_KEY}
    for summary in manifest.get("datasets", {}).values():
        keys.update(shard["key"] for shard in summary["shards"])
        keys.add(summary["counts"]["key"])
        keys.add(summary["offsets"]["key"])
    for summary in manifest.get("rejects", {}).values():
        keys.update(shard["key"] for shard in summary["shards"])
    keys.update(entry["key"] for entry in manifest.get("files", []))
    return keys


def format_funnel(funnel: dict[str, Any]) -> str:
    """The end-of-run table: per stage, in / out / dropped by reason (totals, then per dataset)."""
    lines = []

    def table(title: str, rows: list[dict[str, Any]]) -> None:
        lines.append(title)
        lines.append(f"  {'stage':<13}{'in':>10}{'out':>10}  dropped")
        for row in rows:
            reasons = ", ".join(f"{reason}={count}" for reason, count in row["dropped"].items()) or "-"
            lines.append(f"  {row['stage']:<13}{row['in']:>10}{row['out']:>10}  {reasons}")

    table("all datasets", funnel["total"])
    lines.extend(f"warning: {warning}" for warning in funnel.get("warnings", []))
    for dataset, rows in funnel["per_dataset"].items():
        table(dataset, rows)
    from pipelines.release.input_rows import funnel_lines

    lines += funnel_lines(funnel)
    return "\n".join(lines)
