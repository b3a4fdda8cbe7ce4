"""report.html: the release's audit report, one self-contained file that opens offline in any browser.

What went in (inputs, sha256, licences), what came out (datasets, shards), why each pair was dropped (the
funnel per stage, reason and dataset, with samples of every reject reason), and the distributions behind the
filters (lengths, consistency ranks and scores, negatives, near-duplicate clusters), plotted with matplotlib.

Self-contained: inline CSS, plots as SVG data URIs, no scripts, no links to anything outside the file (a
Content-Security-Policy forbids fetching or running anything). Every text taken from the data is HTML-escaped:
pairs are untrusted input. Deterministic: the same manifest, samples and stats give the same bytes (fixed SVG
hash salt, no dates, text kept as text, sorted inputs), so the report can be listed in the manifest with its
sha256.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any, Iterable

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from pipelines.release.pair_map import render_svg
from pipelines.core.records import ALL_STAGES
from pipelines.release.stats import LENGTH_EDGES, SCORE_BINS, label_order, score_bin_edges

TEXT_PREVIEW_CHARS = 300
# Sample texts show this much in the table; the whole text (up to FULL_TEXT_CHARS) opens below it.
SAMPLE_PREVIEW_CHARS = 160
FULL_TEXT_CHARS = 5_000
MAX_PLOTTED_DATASETS = 12

_MPL_STYLE = {
    "svg.hashsalt": "pair-curation-report",  # fixed ids for clip paths: byte-identical output
    "svg.fonttype": "none",  # text stays text (the browser's font), not font-dependent glyph paths
    "svg.id": None,
    "text.parse_math": False,  # a "$" in a dataset or reason name is text, not mathtext
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_SVG_METADATA = {"Date": None, "Creator": None}
_KEPT_COLOUR, _DROPPED_COLOUR = "#4c9a5f", "#c8553d"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1150px;
padding:0 1.2em 3em;color:#1d1d1d;line-height:1.4}
h1{font-size:1.6em;margin-top:1em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em}table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #d4d4d4;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-word}
img.plot{max-width:100%;height:auto;display:block;margin:.6em 0;border:1px solid #eee}
.note{color:#555;font-size:.92em}.skipped{color:#8a5a00;background:#fff6e0;padding:.4em .7em;
border-left:4px solid #e0a800}
.text{min-width:8em;max-width:30em;white-space:pre-wrap;word-break:break-word;margin:0}
.text .full{border-top:1px dashed #ccc;margin-top:.3em;padding-top:.3em}
.wrap{overflow-wrap:anywhere;min-width:10em}nav ul{columns:2;font-size:.92em}details{margin:.5em 0}summary{cursor:pointer}
"""


# -- small HTML helpers: everything from the data goes through esc() -------------------------------------------

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _preview(text: Any, limit: int = TEXT_PREVIEW_CHARS) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit:,} more chars]"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


class _Html:
    """Markup this module built itself (already escaped), as opposed to text from the data."""

    def __init__(self, markup: str):
        self.html = markup


def _table(headers: list[str], rows: Iterable[list[Any]], numeric: set[int] = frozenset()) -> str:
    """rows hold raw values (escaped here) or ready HTML wrapped in _Html."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, value in enumerate(row):
            content = value.html if isinstance(value, _Html) else (
                _number(value) if index in numeric else esc(value))
            cells.append(f'<td class="n">{content}</td>' if index in numeric else f"<td>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _json_block(value: Any) -> str:
    return f"<pre>{esc(json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False, default=str))}</pre>"


def _skipped(stage: str) -> str:
    return f'<p class="skipped">Stage skipped: <code>{esc(stage)}</code> was left out of this build (--skip).</p>'


def _missing(what: str) -> str:
    return f'<p class="skipped">{esc(what)}</p>'


def _plotted_note(count: int) -> str:
    if count <= MAX_PLOTTED_DATASETS:
        return ""
    return (f'<p class="note">{count} datasets: the plots show the first {MAX_PLOTTED_DATASETS} by name; the '
            "tables list them all.</p>")


# -- plots -------------------------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _plot(figure: Figure, alt: str) -> str:
    """The figure as an <img> with an SVG data URI (isolated: ids in one SVG cannot clash with another's)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(_MPL_STYLE):
        figure.savefig(buffer, format="svg", metadata=_SVG_METADATA)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/svg+xml;base64,{encoded}">'


def _styled(build):
    """Run a figure-building function under the report's matplotlib style (fonts, sizes, no mathtext)."""
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_MPL_STYLE):
            return build(*args, **kwargs)
    return wrapper


# tab20 without its greens, which would read as "passed".
_REASON_PALETTE = [index for index in range(20) if index not in (4, 5)]


def _plain_log_ticks(axis) -> None:
    """Log-axis labels as plain numbers (the default ones are mathtext, which the style turns off)."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _reason_colours(reasons: list[str]) -> dict[str, Any]:
    palette = matplotlib.colormaps["tab20"]
    return {reason: palette(_REASON_PALETTE[index % len(_REASON_PALETTE)])
            for index, reason in enumerate(sorted(reasons))}


@_styled
def funnel_plot(funnel: dict[str, Any]) -> str | None:
    panels = [("all datasets", funnel.get("total", []))]
    panels += [(name, rows) for name, rows in sorted(funnel.get("per_dataset", {}).items())][:MAX_PLOTTED_DATASETS]
    panels = [(name, rows) for name, rows in panels if rows]
    if not panels:
        return None
    reasons = sorted({reason for _, rows in panels for row in rows for reason in row.get("dropped", {})})
    colours = _reason_colours(reasons)
    stages = len(panels[0][1])
    figure = _figure(10, max(2.5, len(panels) * (0.32 * stages + 0.75)))
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for axis, (name, rows) in zip(axes, panels):
        labels = [row["stage"] for row in rows][::-1]
        for position, row in enumerate(rows[::-1]):
            axis.barh(position, row["out"], color=_KEPT_COLOUR, height=0.7)
            left = row["out"]
            for reason, count in sorted(row.get("dropped", {}).items()):
                axis.barh(position, count, left=left, color=colours[reason], height=0.7)
                left += count
        axis.set_yticks(range(len(labels)), labels)
        axis.set_title(f"{name}: rows out of each stage (green) and dropped by reason", loc="left")
        axis.set_xlabel("rows")
    handles = [Patch(color=_KEPT_COLOUR, label="passed")]
    handles += [Patch(color=colours[reason], label=reason) for reason in reasons]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    return _plot(figure, "funnel per stage and reason, per dataset")


def _plotted(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(stats, key=lambda s: s["dataset"])[:MAX_PLOTTED_DATASETS]


@_styled
def length_plot(stats: list[dict[str, Any]]) -> str | None:
    datasets = [s for s in _plotted(stats) if s.get("kept")]
    if not datasets:
        return None
    figure = _figure(10, 3.6)
    axes = figure.subplots(1, 2)
    for axis, field in zip(axes, ("query", "document")):
        occupied = [index for summary in datasets for index, count in enumerate(summary[f"{field}_chars"]) if count]
        for summary in datasets:
            edges = [float(edge) for edge in summary.get("length_edges", LENGTH_EDGES)]
            # Log axis: draw the [0, 1) bin (empty texts) from 0.5, close the open last bin at twice its edge.
            edges = [0.5] + edges[1:] + [edges[-1] * 2]
            counts = summary[f"{field}_chars"]
            total = sum(counts) or 1
            axis.stairs([count / total for count in counts], edges, label=summary["dataset"], linewidth=1.4)
        axis.set_xscale("log")
        _plain_log_ticks(axis.xaxis)
        # Only the range the data occupies (the bins reach millions of characters).
        axis.set_xlim(max(0.5, edges[min(occupied)] / 1.5), edges[max(occupied) + 1] * 1.5)
        axis.set_xlabel(f"{field} length (characters, log scale)")
        axis.set_ylabel("share of kept pairs")
        axis.set_title(f"{field} lengths", loc="left")
    axes[1].legend(fontsize=8)
    return _plot(figure, "query and document length distributions")


def _rank_labels(*counters: dict[str, int]) -> list[str]:
    """Every exact rank from 0 to the largest seen (gaps included, so the axis is linear), then the "N+"
    lower bounds in order."""
    labels = {label for counter in counters for label in counter}
    exact = [int(label) for label in labels if label.isdigit()]
    ordered = [str(rank) for rank in range(0, (max(exact) + 1) if exact else 0)]
    return ordered + sorted((label for label in labels if not label.isdigit()), key=label_order)


@_styled
def rank_plot(stats: list[dict[str, Any]]) -> str | None:
    datasets = [s for s in _plotted(stats) if s.get("rank_kept") or s.get("rank_rejected")]
    if not datasets:
        return None
    figure = _figure(10, 2.6 * len(datasets))
    axes = figure.subplots(len(datasets), 1, squeeze=False)[:, 0]
    for axis, summary in zip(axes, datasets):
        kept, rejected = summary.get("rank_kept", {}), summary.get("rank_rejected", {})
        labels = _rank_labels(kept, rejected)
        positions = range(len(labels))
        kept_counts = [kept.get(label, 0) for label in labels]
        axis.bar(positions, kept_counts, color=_KEPT_COLOUR, label="kept")
        axis.bar(positions, [rejected.get(label, 0) for label in labels], bottom=kept_counts,
                 color=_DROPPED_COLOUR, label="dropped by consistency")
        step = max(1, math.ceil(len(labels) / 20))
        # Every step-th exact rank, and always the last label (the "N+" bins, the deepest rank).
        shown = sorted(set(range(0, len(labels), step)) | {len(labels) - 1})
        axis.set_xticks(shown, [labels[index] for index in shown])
        axis.set_xlabel("rank of the pair's own document among the block's documents (0 = first)")
        axis.set_ylabel("pairs")
        axis.set_title(f"{summary['dataset']}: consistency rank", loc="left")
        axis.legend(fontsize=8)
    return _plot(figure, "consistency rank histogram")


def score_range(summaries: list[dict[str, Any]]) -> tuple[float, float]:
    """The x range of the score plots: 0..1 when every plotted score is at least 0 (cosine scores of one
    model usually are), else from the lowest score's 0.1 step down to 1, so the data fills the plot."""
    lowest = None
    for summary in summaries:
        edges = summary.get("score_edges") or score_bin_edges()
        histograms = [summary.get("positive_kept", []), summary.get("negative_kept", []),
                      *summary.get("rejected_score", {}).values()]
        for histogram in histograms:
            first = next((index for index, count in enumerate(histogram) if count), None)
            if first is not None and first < len(edges):
                lowest = edges[first] if lowest is None else min(lowest, edges[first])
        for point in summary.get("scatter", []):
            lowest = min(point[:2]) if lowest is None else min(lowest, *point[:2])
    if lowest is None or lowest >= 0:
        return 0.0, 1.0
    return max(-1.0, math.floor(round(lowest * 10, 6)) / 10), 1.0


def _score_axis(axis, xlabel: str, span: tuple[float, float]) -> None:
    axis.set_xlim(*span)
    axis.set_xlabel(xlabel)


@_styled
def positive_score_plot(stats: list[dict[str, Any]]) -> str | None:
    datasets = [s for s in _plotted(stats)
                if sum(s.get("positive_kept", [])) or sum(s.get("rejected_score", {}).get("consistency", []))]
    if not datasets:
        return None
    figure = _figure(10, 2.6 * len(datasets))
    axes = figure.subplots(len(datasets), 1, squeeze=False)[:, 0]
    span = score_range(datasets)
    for axis, summary in zip(axes, datasets):
        edges = summary.get("score_edges") or score_bin_edges()
        axis.stairs(summary.get("positive_kept", [0] * SCORE_BINS), edges, color=_KEPT_COLOUR, label="kept",
                    fill=True, alpha=0.6)
        dropped = summary.get("rejected_score", {}).get("consistency")
        if dropped:
            axis.stairs(dropped, edges, color=_DROPPED_COLOUR, label="dropped by consistency", linewidth=1.4)
        _score_axis(axis, "cosine(query, own document), 0.02-wide bins", span)
        axis.set_ylabel("pairs")
        axis.set_title(f"{summary['dataset']}: positive scores", loc="left")
        axis.legend(fontsize=8)
    return _plot(figure, "positive score histograms")


@_styled
def negative_score_plot(stats: list[dict[str, Any]]) -> str | None:
    datasets = [s for s in _plotted(stats) if s.get("scatter") or sum(s.get("negative_kept", []))]
    if not datasets:
        return None
    figure = _figure(10, 3.6 * len(datasets))
    axes = figure.subplots(len(datasets), 2, squeeze=False)
    span = score_range(datasets)
    for (scatter_axis, histogram_axis), summary in zip(axes, datasets):
        points = summary.get("scatter", [])
        if points:
            scatter_axis.scatter([p[0] for p in points], [p[1] for p in points], s=4, alpha=0.5,
                                 color="#3b6ea8", linewidths=0)
        scatter_axis.plot(span, span, color="#888", linewidth=0.8, linestyle="--")
        _score_axis(scatter_axis, "positive score", span)
        scatter_axis.set_ylim(*span)
        scatter_axis.set_ylabel("hardest negative's score")
        scatter_axis.set_title(f"{summary['dataset']}: positive vs hardest negative ({len(points):,} pairs)",
                               loc="left")
        edges = summary.get("score_edges") or score_bin_edges()
        histogram_axis.stairs(summary.get("positive_kept", [0] * SCORE_BINS), edges, color=_KEPT_COLOUR,
                              label="positives", linewidth=1.4)
        histogram_axis.stairs(summary.get("negative_kept", [0] * SCORE_BINS), edges, color="#3b6ea8",
                              label="negatives", linewidth=1.4)
        _score_axis(histogram_axis, "cosine score, 0.02-wide bins", span)
        histogram_axis.set_ylabel("count")
        histogram_axis.set_title("positive and negative scores", loc="left")
        histogram_axis.legend(fontsize=8)
    return _plot(figure, "positive versus negative scores")


def _histogram_items(histogram: dict[str, Any]) -> list[tuple[int, int]]:
    items = []
    for size, count in histogram.items():
        try:
            items.append((int(size), int(count)))
        except (TypeError, ValueError):
            continue
    return sorted(items)


@_styled
def cluster_plot(cluster_histogram: dict[str, Any], stats: list[dict[str, Any]]) -> str | None:
    items = _histogram_items(cluster_histogram or {})
    similarity = [s for s in _plotted(stats) if sum(s.get("rejected_score", {}).get("minhash", []))]
    if not items and not similarity:
        return None
    figure = _figure(10, 3.4)
    size_axis, similarity_axis = figure.subplots(1, 2)
    if items:
        sizes, counts = zip(*items)
        size_axis.bar(range(len(sizes)), counts, color="#7a5195", width=0.7)
        size_axis.set_xlim(-0.75, max(len(sizes), 6) - 0.25)  # a lone size is a bar, not a wall
        step = max(1, math.ceil(len(sizes) / 15))
        size_axis.set_xticks(list(range(len(sizes)))[::step], [str(s) for s in sizes][::step])
        size_axis.set_yscale("log")
        _plain_log_ticks(size_axis.yaxis)
    size_axis.set_xlabel("cluster size (pairs, survivor included)")
    size_axis.set_ylabel("clusters (log scale)")
    size_axis.set_title("near-duplicate cluster sizes", loc="left")
    for summary in similarity:
        edges = summary.get("score_edges") or score_bin_edges()
        similarity_axis.stairs(summary["rejected_score"]["minhash"], edges, label=summary["dataset"],
                               linewidth=1.4)
    similarity_axis.set_xlim(0, 1)
    similarity_axis.set_xlabel("estimated Jaccard similarity to the survivor")
    similarity_axis.set_ylabel("dropped pairs")
    similarity_axis.set_title("similarity of dropped near-duplicates", loc="left")
    if similarity:
        similarity_axis.legend(fontsize=8)
    return _plot(figure, "near-duplicate cluster sizes")


# -- sections --------------------------------------------------------------------------------------------------

def _skipped_stages(manifest: dict[str, Any]) -> set[str]:
    return set(manifest.get("skipped_stages") or [])


def _overview(manifest: dict[str, Any], license_id: str, attribution: str) -> str:
    project = manifest.get("project") or {}
    datasets = manifest.get("datasets") or {}
    rejects = manifest.get("rejects") or {}
    rows = [["source", manifest.get("source", "")],
            ["project", f"{project.get('name', '')} {project.get('version', '')}"],
            ["commit", project.get("commit", "")],
            ["release format", manifest.get("format", "")],
            ["configuration sha256", manifest.get("config_sha256", "")],
            ["stages run", ", ".join(manifest.get("funnel", {}).get("stages", [])) or "-"],
            ["stages skipped", ", ".join(sorted(_skipped_stages(manifest))) or "none"],
            ["pairs published", f"{sum(s.get('rows', 0) for s in datasets.values()):,}"],
            ["rows rejected", f"{sum(s.get('rows', 0) for s in rejects.values()):,}"]]
    if license_id:
        rows.append(["release licence", license_id])
    parts = ["<h2 id=\"overview\">Overview</h2>", _table(["field", "value"], rows)]
    if attribution:
        parts.append(f'<p class="note">Attribution: {esc(attribution)}</p>')
    mixture = manifest.get("mixture")
    if isinstance(mixture, dict):  # a mixture build: which source gave which datasets, with its weight
        parts.append("<h3>Sources</h3>")
        parts.append(_table(["source", "weight", "datasets", "inputs"],
                            [[entry.get("source", ""), entry.get("weight", ""),
                              ", ".join(entry.get("datasets", [])), len(entry.get("inputs", []))]
                             for entry in mixture.get("sources", [])], {1, 3}))
    names = sorted(set(datasets) | set(rejects))
    table_rows = []
    for name in names:
        summary, rejected = datasets.get(name, {}), rejects.get(name, {})
        table_rows.append([name, summary.get("rows", 0), len(summary.get("shards", [])), rejected.get("rows", 0),
                           len(rejected.get("shards", []))])
    parts.append("<h3>Datasets</h3>")
    parts.append(_table(["dataset", "pairs", "shards", "rejects", "reject shards"], table_rows, {1, 2, 3, 4}))
    parts.append('<p class="note">Any pair, kept or dropped, can be traced with '
                 '<code>python -m pipelines.explain RELEASE ID</code>.</p>')
    return "\n".join(parts)


def _funnel_section(manifest: dict[str, Any]) -> str:
    funnel = manifest.get("funnel") or {}
    parts = ['<h2 id="funnel">Funnel</h2>',
             '<p class="note">Rows entering each stage, leaving it, and dropped by reason. Every dropped row is '
             'in <code>rejects/DATASET/</code> with its stage, reason and the numbers behind the decision.</p>']
    plot = funnel_plot(funnel)
    if plot:
        parts.append(plot)
        parts.append(_plotted_note(len(funnel.get("per_dataset") or {})))

    def rows_of(rows):
        for row in rows:
            dropped = ", ".join(f"{reason}: {count:,}" for reason, count in sorted(row.get("dropped", {}).items()))
            share = row["out"] / row["in"] if row.get("in") else None
            yield [row.get("stage", ""), row.get("in", 0), row.get("out", 0),
                   "-" if share is None else f"{share:.1%}", dropped or "-"]

    headers = ["stage", "in", "out", "kept", "dropped by reason"]
    parts.append("<h3>All datasets</h3>" + _table(headers, rows_of(funnel.get("total", [])), {1, 2, 3}))
    for name, rows in sorted((funnel.get("per_dataset") or {}).items()):
        parts.append(f"<h3>{esc(name)}</h3>" + _table(headers, rows_of(rows), {1, 2, 3}))
    input_rows = _input_rows_part(manifest)
    if input_rows:
        parts.append(input_rows)
    return "\n".join(parts)


def _input_rows_part(manifest: dict[str, Any]) -> str:
    """Input rows by outcome (sources that account for every row), and how they relate to the candidates."""
    accounted = (manifest.get("funnel") or {}).get("input_rows")
    if not accounted:
        return ""
    parts = ["<h3>Input rows</h3>"]
    if accounted.get("note"):
        parts.append(f'<p class="note">{esc(accounted["note"])}</p>')
    meanings = accounted.get("outcomes") or {}
    rows = []
    for item in manifest.get("inputs") or []:
        for outcome, count in (item.get("rows_by_outcome") or {}).items():
            rows.append([item.get("name", ""), outcome, count, meanings.get(outcome, "")])
    parts.append(_table(["input", "outcome", "rows", "meaning"], rows, {2}))
    for line in accounted.get("warnings") or []:
        parts.append(f'<p class="note">Warning: {esc(line)}</p>')
    return "\n".join(parts)


def _median_bin(counts: list[int], edges: list[int]) -> str:
    """The length bin holding the median: exact counts, so only the bin (not the value) is known."""
    total = sum(counts)
    running = 0
    for index, count in enumerate(counts):
        running += count
        if total and running * 2 >= total:
            low = edges[index]
            if index + 1 >= len(edges):
                return f"{low:,}+"
            high = edges[index + 1] - 1
            return f"{low:,}" if high <= low else f"{low:,}-{high:,}"
    return "-"


def _lengths_section(stats: list[dict[str, Any]] | None) -> str:
    parts = ['<h2 id="lengths">Lengths</h2>']
    if stats is None:
        return "\n".join(parts + [_missing("Distributions were not computed for this release.")])
    parts.append('<p class="note">Characters per text over every published pair (log-spaced bins, each '
                 'dataset normalised to its own total).</p>')
    plot = length_plot(stats)
    parts.append(plot or _missing("No published pairs."))
    parts.append(_plotted_note(len(stats)))
    rows = []
    for summary in sorted(stats, key=lambda s: s["dataset"]):
        kept = summary.get("kept", 0)
        edges = summary.get("length_edges", list(LENGTH_EDGES))
        row = [summary["dataset"], kept]
        for field in ("query", "document"):
            row += [summary.get(f"{field}_chars_sum", 0) / kept if kept else 0,
                    _median_bin(summary.get(f"{field}_chars", []), edges),
                    summary.get(f"{field}_chars_max", 0)]
        rows.append(row)
    parts.append(_table(["dataset", "pairs", "query mean", "query median (bin)", "query max", "document mean",
                         "document median (bin)", "document max"], rows, {1, 2, 4, 5, 7}))
    return "\n".join(parts)


def _stage_report_block(manifest: dict[str, Any], stage: str) -> str:
    reports = manifest.get("stage_reports") or {}
    report = reports.get(stage)
    if not report:
        # The embedding stages run as one transform: the negatives' numbers may sit inside its report.
        report = next((r[stage] for r in reports.values()
                       if isinstance(r, dict) and isinstance(r.get(stage), dict)), None)
    if not report:
        return ""
    return f"<details><summary>{esc(stage)} stage report (manifest)</summary>{_json_block(report)}</details>"


def _consistency_section(manifest: dict[str, Any], stats: list[dict[str, Any]] | None) -> str:
    parts = ['<h2 id="consistency">Consistency filter</h2>']
    if "consistency" in _skipped_stages(manifest):
        return "\n".join(parts + [_skipped("consistency")])
    top_k = ((manifest.get("config") or {}).get("consistency") or {}).get("top_k")
    parts.append('<p class="note">Each pair\'s query searched its block\'s documents; the pair is kept when its '
                 f'own document ranks within the top {esc(top_k if top_k is not None else "k")} '
                 '(rank 0 is first).</p>')
    if stats is None:
        parts.append(_missing("Distributions were not computed for this release."))
    else:
        parts.append(rank_plot(stats) or _missing("No consistency ranks recorded."))
        parts.append(positive_score_plot(stats) or _missing("No positive scores recorded."))
    stage_report = (manifest.get("stage_reports") or {}).get("consistency") or {}
    rank_histogram = stage_report.get("rank_histogram")
    if isinstance(rank_histogram, dict) and rank_histogram:
        parts.append("<h3>Rank histogram (stage report)</h3>")
        parts.append(_table(["rank", "pairs"], sorted(rank_histogram.items(), key=lambda kv: label_order(str(kv[0]))),
                            {1}))
    parts.append(_stage_report_block(manifest, "consistency"))
    return "\n".join(parts)


def _negatives_section(manifest: dict[str, Any], stats: list[dict[str, Any]] | None) -> str:
    parts = ['<h2 id="negatives">Hard negatives</h2>']
    if "negatives" in _skipped_stages(manifest):
        return "\n".join(parts + [_skipped("negatives")])
    parts.append('<p class="note">Each point is one published pair (a deterministic sample: the smallest id '
                 'hashes): its positive score against its hardest negative\'s score. Points above the dashed '
                 'line have a negative that scores higher than the positive.</p>')
    if stats is None:
        parts.append(_missing("Distributions were not computed for this release."))
    else:
        parts.append(negative_score_plot(stats) or _missing("No negative scores recorded."))
        rows = [[s["dataset"], ", ".join(f"{n} negatives: {c:,}" for n, c in s.get("negatives_per_pair", {}).items())]
                for s in sorted(stats, key=lambda s: s["dataset"])]
        parts.append(_table(["dataset", "pairs by number of negatives"], rows))
    parts.append(_stage_report_block(manifest, "negatives"))
    return "\n".join(parts)


def _dedup_section(manifest: dict[str, Any], stats: list[dict[str, Any]] | None) -> str:
    skipped = _skipped_stages(manifest)
    parts = ['<h2 id="dedup">Duplicates</h2>', "<h3>Exact duplicates</h3>"]
    if "exact_dedup" in skipped:
        parts.append(_skipped("exact_dedup"))
    else:
        total = next((row for row in (manifest.get("funnel") or {}).get("total", [])
                      if row.get("stage") == "exact_dedup"), None)
        if total:
            dropped = sum(total.get("dropped", {}).values())
            parts.append(f"<p>{dropped:,} of {total.get('in', 0):,} pairs were exact copies of a survivor "
                         "(detail.survivor_id in each reject).</p>")
        parts.append(_stage_report_block(manifest, "exact_dedup"))
    parts.append("<h3>Near duplicates (MinHash)</h3>")
    if "minhash" in skipped:
        parts.append(_skipped("minhash"))
        return "\n".join(parts)
    stage_report = (manifest.get("stage_reports") or {}).get("minhash") or {}
    histogram = stage_report.get("cluster_size_histogram")
    plot = cluster_plot(histogram if isinstance(histogram, dict) else {}, stats or [])
    parts.append(plot or _missing("No near-duplicate clusters recorded."))
    if isinstance(histogram, dict) and histogram:
        parts.append(_table(["cluster size", "clusters"], _histogram_items(histogram), {0, 1}))
    parts.append(_stage_report_block(manifest, "minhash"))
    parts.append(_decontamination_part(manifest))
    return "\n".join(parts)


def _decontamination_part(manifest: dict[str, Any]) -> str:
    """Pairs overlapping evaluation texts, and the n-grams too common to count (when the stage ran)."""
    report = (manifest.get("stage_reports") or {}).get("decontaminate")
    if not isinstance(report, dict):
        return ""
    parts = ["<h3>Overlap with evaluation sets (decontaminate)</h3>",
             f"<p>{report.get('contaminated_pairs', 0):,} pairs shared a text or a "
             f"{report.get('parameters', {}).get('ngram', '')}-word n-gram with one of "
             f"{report.get('evaluation_texts', 0):,} evaluation texts and were dropped as contaminated; "
             f"{report.get('too_common_ngrams', 0):,} n-grams were in more than "
             f"{report.get('parameters', {}).get('max_matches', '')} pairs and ignored as too common.</p>"]
    common = report.get("most_common_ngrams") or []
    if common:
        parts.append(_table(["n-gram (too common)", "pairs", "evaluation record"],
                            [[item.get("ngram", item.get("key", "")), item.get("pairs", 0),
                              item.get("evaluation_record", "")] for item in common], {1}))
    parts.append(_stage_report_block(manifest, "decontaminate"))
    return "\n".join(parts)


def _provenance_cell(provenance: Any) -> _Html:
    if not isinstance(provenance, dict):
        return _Html(esc(provenance or ""))

    def shown(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)

    def line(key: str) -> str:
        return f"<b>{esc(key)}</b>: {esc(_preview(shown(provenance[key]), 200))}"

    # The record and its URL say where the pair comes from; the rest opens on a click, keeping rows short.
    first = [key for key in ("record", "url") if key in provenance]
    rest = [key for key in sorted(provenance) if key not in first]
    markup = "<br>".join(line(key) for key in first)
    if rest:
        more = "<br>".join(line(key) for key in rest)
        markup += (("<br>" if markup else "") +
                   f"<details><summary>{len(rest)} more</summary>{more}</details>")
    return _Html('<div class="wrap">' + markup + "</div>")


def _text_cell(text: Any) -> _Html:
    """A sample text: in full when short; else its start with an ellipsis, and the full text one click away
    (a <details> element: no script), so nothing is clipped and the table stays short."""
    text = "" if text is None else str(text)
    if len(text) <= SAMPLE_PREVIEW_CHARS:
        return _Html(f'<div class="text">{esc(text)}</div>')
    head = text[:SAMPLE_PREVIEW_CHARS].rstrip()
    return _Html(f'<details class="text"><summary>{esc(head)}…</summary>'
                 f'<div class="full">{esc(_preview(text, FULL_TEXT_CHARS))}</div></details>')


def _scores_cell(scores: Any) -> _Html:
    if not isinstance(scores, dict) or not scores:
        return _Html("-")
    parts = []
    for key in sorted(scores):
        value = scores[key]
        if isinstance(value, list):
            shown = ", ".join(_number(v) for v in value[:10]) + (" …" if len(value) > 10 else "")
            parts.append(f"<b>{esc(key)}</b>: [{shown}]")
        else:
            parts.append(f"<b>{esc(key)}</b>: {_number(value)}")
    return _Html("<br>".join(parts))


def _stage_order(stage: str) -> int:
    return ALL_STAGES.index(stage) if stage in ALL_STAGES else len(ALL_STAGES)


def _samples_section(samples: list[dict[str, Any]]) -> str:
    parts = ['<h2 id="samples">Samples</h2>',
             '<p class="note">The pairs with the smallest ids in each group (a choice independent of content): '
             'kept pairs per dataset, and rejects per stage and reason (click a group to open it). Long texts '
             f'show their first {SAMPLE_PREVIEW_CHARS} characters; click one to read it whole.</p>']
    groups = sorted((tuple(str(part) for part in sample.get("group", [])), sample.get("items", []))
                    for sample in samples or [])
    kept = [(group, items) for group, items in groups if group and group[0] == "kept"]
    # Rejects in graph order (read, normalize, ...), then by reason.
    rejected = sorted(((group, items) for group, items in groups if group and group[0] == "rejected"),
                      key=lambda entry: (_stage_order(entry[0][1] if len(entry[0]) > 1 else ""), entry[0]))
    parts.append("<h3>Kept pairs</h3>")
    if not kept:
        parts.append(_missing("No kept pairs."))
    for group, items in kept:
        rows = [[_Html(f'<span class="mono">{esc(item.get("id", ""))}</span>'), _text_cell(item.get("query")),
                 _text_cell(item.get("document")), _scores_cell(item.get("scores")),
                 len(item.get("negatives") or []), _provenance_cell(item.get("provenance"))]
                for item in sorted(items, key=lambda item: str(item.get("id", "")))]
        parts.append(f"<details open><summary><b>{esc(group[1])}</b> ({len(rows)} pairs)</summary>")
        parts.append(_table(["id", "query", "document", "scores", "negatives", "provenance"], rows, {4}))
        parts.append("</details>")
    parts.append("<h3>Rejects by stage and reason</h3>")
    if not rejected:
        parts.append(_missing("No rejects."))
    for group, items in rejected:
        rows = []
        for item in sorted(items, key=lambda item: str(item.get("id", ""))):
            texts = item.get("raw") if "raw" in item and "query" not in item else None
            detail = json.dumps(item.get("detail", {}), sort_keys=True, ensure_ascii=False)
            rows.append([_Html(f'<span class="mono">{esc(item.get("id", ""))}</span>'), item.get("dataset", ""),
                         _text_cell(item.get("query", texts if texts is not None else "")),
                         _text_cell(item.get("document", "")),
                         _Html(f'<div class="mono wrap">{esc(_preview(detail, 400))}</div>'),
                         _provenance_cell(item.get("provenance"))])
        stage, reason = (group + ("", ""))[1:3]
        # Closed by default: one line per reason keeps the page short; the funnel already gives the counts.
        parts.append(f"<details><summary><b>{esc(stage)} / {esc(reason)}</b> ({len(rows)} samples)</summary>")
        parts.append(_table(["id", "dataset", "query (or raw input)", "document", "detail", "provenance"], rows))
        parts.append("</details>")
    return "\n".join(parts)


def _inputs_section(manifest: dict[str, Any], stats: list[dict[str, Any]] | None, license_id: str) -> str:
    parts = ['<h2 id="inputs">Inputs and licences</h2>',
             '<p class="note">Every input file with its size and sha256 (as hashed before the run), the licences '
             "its rows carry, and how many of its rows were published or rejected.</p>"]
    per_input: dict[str, dict[str, list[int]]] = {}
    for summary in stats or []:
        for entry in summary.get("inputs", []):
            licences = per_input.setdefault(str(entry.get("input", "")), {})
            counts = licences.setdefault(str(entry.get("license", "")), [0, 0])
            counts[0] += entry.get("kept", 0)
            counts[1] += entry.get("rejected", 0)

    def licence_text(name: str) -> str:
        licences = per_input.get(name)
        if not licences:
            return license_id or "-"
        return "; ".join(f"{licence or '(none given)'}" for licence in sorted(licences))

    def row_counts(name: str) -> tuple[Any, Any]:
        licences = per_input.get(name)
        if not licences:
            return ("-", "-")
        return (sum(c[0] for c in licences.values()), sum(c[1] for c in licences.values()))

    rows = []
    listed = set()
    for item in sorted(manifest.get("inputs") or [], key=lambda item: str(item.get("name", ""))):
        name = str(item.get("name", ""))
        listed.add(name)
        kept, rejected = row_counts(name)
        rows.append([name, item.get("bytes", ""), _Html(f'<span class="mono">{esc(item.get("sha256", ""))}</span>'),
                     licence_text(name), kept, rejected])
    parts.append(_table(["input", "bytes", "sha256", "licences", "rows published", "rows rejected"], rows,
                        {1, 4, 5}))
    # Rows whose provenance names an input the manifest does not list (e.g. a member inside an archive).
    others = sorted(set(per_input) - listed)
    if others:
        parts.append("<h3>Provenance inputs not listed as files</h3>")
        parts.append(_table(["input (from provenance)", "licences", "rows published", "rows rejected"],
                            [[name, licence_text(name), *row_counts(name)] for name in others], {2, 3}))
    return "\n".join(parts)


def _model_section(manifest: dict[str, Any]) -> str:
    parts = ['<h2 id="model">Model</h2>']
    model = manifest.get("model")
    if not model:
        skipped = _skipped_stages(manifest) & {"consistency", "negatives"}
        parts.append(_missing("No embedding model was used: " + (
            f"stages skipped: {', '.join(sorted(skipped))}." if skipped else "none recorded.")))
    elif isinstance(model, dict):
        parts.append(_table(["field", "value"], [
            [key, json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value]
            for key, value in sorted(model.items())]))
    else:
        parts.append(f"<p>{esc(model)}</p>")
    embedding = (manifest.get("config") or {}).get("embedding")
    if embedding:
        parts.append("<details><summary>embedding configuration</summary>" + _json_block(embedding) + "</details>")
    return "\n".join(parts)


def _configuration_section(manifest: dict[str, Any]) -> str:
    return ('<h2 id="configuration">Configuration</h2>'
            f'<p class="note">Resolved configuration (sha256 <code>{esc(manifest.get("config_sha256", ""))}</code>).'
            "</p><details><summary>show</summary>" + _json_block(manifest.get("config") or {}) + "</details>")


_SECTIONS = [("overview", "Overview"), ("funnel", "Funnel"), ("lengths", "Lengths"),
             ("consistency", "Consistency filter"), ("negatives", "Hard negatives"), ("dedup", "Duplicates"),
             ("map", "Map"), ("samples", "Samples"), ("inputs", "Inputs and licences"), ("model", "Model"),
             ("configuration", "Configuration")]


def _map_section(pair_map: dict[str, Any] | None) -> str:
    head = '<h2 id="map">Map</h2>'
    if not pair_map or not pair_map.get("points"):
        return head + _missing("No pairs to place on a map.")
    points = pair_map["points"]
    sampled = (f"{len(points):,} of {pair_map.get('candidates', len(points)):,} pairs (the smallest ids)"
               if pair_map.get("sampled") else f"all {len(points):,} pairs")
    dropped = sum(1 for point in points if point["dropped"])
    return (head + f"<p>{esc(sampled)}, placed by {esc(pair_map['projection'])}; coloured by dataset, "
            f"{dropped:,} dropped by the consistency filter drawn hollow. Hover a point for its query and id."
            f"</p>{render_svg(pair_map)}")


def render_report(manifest: dict[str, Any], samples: list[dict[str, Any]],
                  stats: list[dict[str, Any]] | None = None, *, license_id: str = "", attribution: str = "",
                  pair_map: dict[str, Any] | None = None) -> str:
    """The whole report as one HTML string.

    ``manifest``: the release manifest (a draft without report.html in ``files`` is fine); ``samples``: dicts
    ``{"group": ["kept", DATASET, ""] | ["rejected", STAGE, REASON], "items": [records]}``; ``stats``: one
    :func:`pipelines.release.stats.extract` summary per dataset, or None when distributions were not computed;
    ``pair_map``: :func:`pipelines.release.pair_map.build_map`'s result, or None.
    """
    source = manifest.get("source", "")
    title = f"Audit report: {source} release"
    nav = "".join(f'<li><a href="#{anchor}">{esc(label)}</a></li>' for anchor, label in _SECTIONS)
    body = [
        f"<h1>{esc(title)}</h1>",
        f"<nav><ul>{nav}</ul></nav>",
        _overview(manifest, license_id, attribution),
        _funnel_section(manifest),
        _lengths_section(stats),
        _consistency_section(manifest, stats),
        _negatives_section(manifest, stats),
        _dedup_section(manifest, stats),
        _map_section(pair_map),
        _samples_section(samples),
        _inputs_section(manifest, stats, license_id),
        _model_section(manifest),
        _configuration_section(manifest),
    ]
    # The policy is a second line of defence behind escaping: no script runs and nothing is fetched.
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        'style-src \'unsafe-inline\'">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        *[part for part in body if part],
        "</body></html>",
        "",
    ])
