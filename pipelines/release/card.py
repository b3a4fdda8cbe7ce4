"""The release's README.md: a Hugging Face dataset card (YAML header) with the numbers and the attribution."""

from __future__ import annotations

from typing import Any

import yaml

from pipelines.release import input_rows


def _size_category(rows: int) -> str:
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if rows < bound:
            return label
    return "100M<n<1B"


def render_card(manifest: dict[str, Any], *, license_id: str, attribution: str, pretty_name: str = "",
                has_report: bool = False) -> str:
    datasets = manifest.get("datasets", {})
    total_rows = sum(summary["rows"] for summary in datasets.values())
    header = {
        "license": license_id,
        "language": ["en"],
        "pretty_name": pretty_name or f"{manifest['source']} contrastive pairs",
        "task_categories": ["sentence-similarity", "feature-extraction"],
        "tags": ["contrastive-learning", "embeddings", "pair-curation"],
        "size_categories": [_size_category(total_rows)],
        "configs": [{"config_name": name, "data_files": [{"split": "train", "path": f"data/{name}/*.jsonl.gz"}]}
                    for name in sorted(datasets)],
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=True, allow_unicode=False).rstrip(), "---", ""]
    lines.append(f"# {header['pretty_name']}")
    lines.append("")
    lines.append(f"Contrastive training pairs curated from `{manifest['source']}` by the pair-curation pipeline "
                 f"(version {manifest['project']['version']}). Every input is hashed, every dropped pair is "
                 "listed with its stage and reason under `rejects/`, and every file is checksummed in "
                 "`manifest.json`; `python -m pipelines.verify RELEASE` re-checks it all.")
    if has_report:
        lines.append("")
        lines.append("The audit report, with the funnel, distributions and samples, is [report.html](report.html).")
    lines += ["", "## Datasets", "", "| dataset | rows | shards |", "|---|---:|---:|"]
    for name, summary in sorted(datasets.items()):
        lines.append(f"| {name} | {summary['rows']:,} | {len(summary['shards'])} |")
    lines += ["", "Each line is a JSON object in the contrastors format: `query`, `document`, `negatives`, "
              "`metadata.objective` (which column combinations are valid), `scores`, `provenance` and a "
              "content-derived `id`. `counts.json` and `offsets.json.gz` index each dataset's shards."]
    lines += ["", "## Funnel", "", "| stage | in | out | dropped |", "|---|---:|---:|---|"]
    for row in manifest["funnel"]["total"]:
        reasons = ", ".join(f"{reason}: {count:,}" for reason, count in row["dropped"].items()) or "-"
        lines.append(f"| {row['stage']} | {row['in']:,} | {row['out']:,} | {reasons} |")
    for warning in manifest["funnel"].get("warnings", []):
        lines += ["", f"**Warning:** {warning}."]
    lines += input_rows.card_lines(manifest)
    skipped = manifest.get("skipped_stages") or []
    if skipped:
        lines += ["", f"Stages skipped in this build: {', '.join(skipped)}."]
    model = manifest.get("model")
    if model:
        lines += ["", "## Model", "", f"Consistency filtering and negative mining used `{model.get('name')}` "
                  f"(weights sha256 `{model.get('weights_sha256', 'unknown')}`)."]
    lines += ["", "## Inputs", "", "| input | bytes | sha256 |", "|---|---:|---|"]
    for item in manifest.get("inputs", []):
        lines.append(f"| {item['name']} | {item['bytes']:,} | `{item['sha256']}` |")
    lines += ["", "## Licence and attribution", "", attribution or "See each pair's `provenance.license`."]
    lines.append("")
    return "\n".join(lines)
