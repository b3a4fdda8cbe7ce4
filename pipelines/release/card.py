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


def sentence_transformers_recipe(dataset: str) -> str:
    """The lines that turn one dataset of a release into sentence-transformers' (anchor, positive,
    negative_1..k) columns; run from the release root. The card and the README show them, a test runs them."""
    return "\n".join([
        "from datasets import load_dataset",
        "",
        f'pairs = load_dataset("json", data_files="data/{dataset}/*.jsonl.gz", split="train")',
        'k = len(pairs[0]["negatives"])  # every row of a dataset has the same number of negatives',
        'train_dataset = pairs.map(lambda row: {"anchor": row["query"], "positive": row["document"],',
        '                                       **{f"negative_{i + 1}": row["negatives"][i] for i in range(k)}},',
        "                          remove_columns=pairs.column_names)",
    ])


def recipe_dataset(datasets: dict[str, Any]) -> str:
    """The dataset the card's recipe names: the first with negatives, else the first."""
    with_negatives = [name for name, summary in sorted(datasets.items()) if summary.get("negatives_per_row")]
    return (with_negatives or sorted(datasets) or ["DATASET"])[0]


def render_card(manifest: dict[str, Any], *, license_id: str, attribution: str, pretty_name: str = "",
                has_report: bool = False, map_projection: str = "") -> str:
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
        if map_projection:
            lines.append(f"Its map places up to 2,000 pairs (a sample by id when there are more) by {map_projection}.")
    mixture = manifest.get("mixture")
    if mixture:
        lines += ["", "## Sources", "", "Built from several sources in one run (a mixture): each source's datasets "
                  "and its weight in `contrastors.yaml`.", "", "| source | weight | datasets |", "|---|---:|---|"]
        for entry in mixture.get("sources", []):
            lines.append(f"| {entry['source']} | {entry['weight']} | {', '.join(entry.get('datasets', [])) or '-'} |")
    lines += ["", "## Datasets", "", "| dataset | rows | shards |", "|---|---:|---:|"]
    for name, summary in sorted(datasets.items()):
        lines.append(f"| {name} | {summary['rows']:,} | {len(summary['shards'])} |")
    lines += ["", "Each line is a JSON object in the contrastors format: `query`, `document`, `negatives`, "
              "`metadata.objective` (which column combinations are valid), `scores`, `provenance` and a "
              "content-derived `id`. `counts.json` and `offsets.json.gz` index each dataset's shards for "
              "contrastors' loader, keyed for where the release is read from (`manifest.json` `location`)."]
    triplets = {name: summary["negatives_per_row"] for name, summary in sorted(datasets.items())
                if summary.get("negatives_per_row")}
    if triplets:
        listed = ", ".join(f"`{name}` ({count} negatives on every row)" for name, count in triplets.items())
        lines += ["", f"Triplet datasets: {listed}. A pair for which fewer hard negatives "
                  "were found is not published here: it is in `rejects/` with reason `too_few_negatives` (so a "
                  "trainer's batch never pairs a query with the wrong documents)."]
    lines += ["", "Every row has the same columns and types in every dataset (`provenance` holds `record`, "
              "`input`, `license`, `url`, `post_ids`, and `extra`: a JSON object, as a string, with what is "
              "specific to the source), so all shards load together:", "", "```python",
              "from datasets import load_dataset", "",
              'pairs = load_dataset("json", data_files="data/*/*.jsonl.gz", split="train")', "```"]
    lines += ["", "## Training with it", "",
              "- contrastors: `contrastors.yaml` is its data config (`data_args.input_shards`), one entry per "
              "dataset with its shards and objective; for a release in a folder, run the trainer from the "
              "release root.",
              "- Hugging Face: `load_dataset(REPO, DATASET)` loads one dataset (the `configs` above).",
              "- sentence-transformers: these lines give `(anchor, positive, negative_1..k)` columns for "
              "`MultipleNegativesRankingLoss` (run from the release root; `pip install accelerate` for its "
              "trainer):", "", "```python", sentence_transformers_recipe(recipe_dataset(datasets)), "```"]
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
    evaluation = manifest.get("evaluation_inputs") or []
    if evaluation:
        lines += ["", "## Decontamination", "", "Pairs overlapping these evaluation texts (equal after "
                  "normalization, or sharing an n-gram of "
                  f"{manifest.get('config', {}).get('decontaminate', {}).get('ngram', 13)} words) were dropped as "
                  "`contaminated`.", "", "| evaluation input | bytes | sha256 |", "|---|---:|---|"]
        for item in evaluation:
            lines.append(f"| {item['name']} | {item['bytes']:,} | `{item['sha256']}` |")
    lines += ["", "## Licence and attribution", "", attribution or "See each pair's `provenance.license`."]
    lines.append("")
    return "\n".join(lines)
