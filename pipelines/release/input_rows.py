"""What became of every input row, for sources that account for them (StackExchange).

A source's read transform may return ``input_rows``: one dict with, per input name, ``rows`` and
``rows_by_outcome`` (and per archive member), the totals, the meaning of each outcome, a note on how rows
become pair candidates, and warnings. Here it joins the manifest: ``inputs[i]`` gains ``rows`` and
``rows_by_outcome``; ``funnel.input_rows`` holds the totals; the card and the end-of-run table show both.
"""

from __future__ import annotations

from typing import Any


class UnaccountedInputRows(Exception):
    """An input's outcomes do not sum to its rows: never published."""


def apply_input_rows(static: dict[str, Any], funnel: dict[str, Any], summaries: list[dict[str, Any]]
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (static manifest with per-input rows, funnel with ``input_rows``); unchanged without a summary."""
    if not summaries:
        return static, funnel
    summary = summaries[0]
    per_input = summary.get("inputs") or {}
    inputs = []
    for item in static.get("inputs") or []:
        accounted = per_input.get(item.get("name"))
        if accounted is not None:
            if sum(accounted["rows_by_outcome"].values()) != accounted["rows"]:
                raise UnaccountedInputRows(f"{item.get('name')}: outcomes do not sum to its rows")
            item = {**item, **accounted}
        inputs.append(item)
    totals = {key: summary[key] for key in ("rows", "rows_by_outcome", "outcomes", "note", "warnings")
              if key in summary}
    return {**static, "inputs": inputs}, {**funnel, "input_rows": totals}


def warnings_of(funnel: dict[str, Any]) -> list[str]:
    return list((funnel.get("input_rows") or {}).get("warnings") or [])


def funnel_lines(funnel: dict[str, Any]) -> list[str]:
    """Lines for the end-of-run table: input rows by outcome, then the warnings."""
    accounted = funnel.get("input_rows")
    if not accounted:
        return []
    outcomes = ", ".join(f"{name}={count}" for name, count in accounted.get("rows_by_outcome", {}).items()) or "-"
    lines = [f"input rows {accounted.get('rows', 0)}: {outcomes}"]
    lines += [f"warning: {line}" for line in accounted.get("warnings", [])]
    return lines


def card_lines(manifest: dict[str, Any]) -> list[str]:
    """The card's "Input rows" section (empty without accounting)."""
    accounted = (manifest.get("funnel") or {}).get("input_rows")
    if not accounted:
        return []
    lines = ["", "## Input rows", ""]
    if accounted.get("note"):
        lines += [accounted["note"], ""]
    lines += ["| input | rows | outcome | rows with it |", "|---|---:|---|---:|"]
    for item in manifest.get("inputs") or []:
        if "rows_by_outcome" not in item:
            continue
        outcomes = list(item["rows_by_outcome"].items()) or [("-", 0)]
        for index, (outcome, count) in enumerate(outcomes):
            name, rows = (item["name"], f"{item['rows']:,}") if index == 0 else ("", "")
            lines.append(f"| {name} | {rows} | {outcome} | {count:,} |")
    meanings = accounted.get("outcomes") or {}
    if meanings:
        lines += ["", "Outcomes:", ""]
        lines += [f"- `{outcome}`: {meaning}" for outcome, meaning in meanings.items()]
    warnings = accounted.get("warnings") or []
    if warnings:
        lines += ["", "Warnings:", ""]
        lines += [f"- {line}" for line in warnings]
    return lines
