"""Text fidelity and row accounting of a StackExchange release, measured against the dump's own HTML.

    python benchmarks/stackexchange_fidelity.py RELEASE DUMP_FOLDER [DUMP_FOLDER ...]

Prints, over the release's title_body and question_answer pairs:
- indented code: pairs whose post has indented lines inside <pre> blocks, and how many of them carry every
  such line with its indentation (a line of the pair ends with the code line, after "> " quote markers);
- ordered lists: <ol> items in those posts, and how many appear as "N. item" at the start of a line;
- the stock alt text "enter image description here": pairs containing it;
- titles with angle brackets kept;
and per input file of the manifest: rows (``<row`` lines in the dump) against ``sum(rows_by_outcome)``.
The HTML is read here with lxml directly, not with the pipeline's converter, so the check is independent.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import unicodedata
from pathlib import Path

import lxml.html
from defusedxml.ElementTree import fromstring

STOCK = "enter image description here"


def load_posts(dump: Path) -> dict[tuple[str, str], dict[str, str]]:
    posts = {}
    with open(dump / "Posts.xml", encoding="utf-8-sig") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("<row"):
                attributes = fromstring(line).attrib
                posts[(dump.name, attributes["Id"])] = dict(attributes)
    return posts


def indented_code_lines(body: str) -> list[str]:
    if "<pre" not in body:
        return []
    root = lxml.html.fragment_fromstring(body, create_parent="div")
    lines = []
    for pre in root.iter("pre"):
        for line in pre.text_content().split("\n"):
            if line[:1] in (" ", "\t") and line.strip():
                lines.append(unicodedata.normalize("NFKC", line.rstrip()))
    return lines


def ordered_items(body: str) -> list[tuple[int, str]]:
    if "<ol" not in body:
        return []
    root = lxml.html.fragment_fromstring(body, create_parent="div")
    items = []
    for ol in root.iter("ol"):
        try:
            number = int(ol.get("start") or 1)
        except ValueError:
            number = 1
        for li in ol:
            if li.tag != "li":
                continue
            words = " ".join(li.text_content().split()[:3])
            items.append((number, unicodedata.normalize("NFKC", words)))
            number += 1
    return items


def keeps_line(text_lines: list[str], code_line: str) -> bool:
    for line in text_lines:
        if line.endswith(code_line) and re.fullmatch(r"[> ]*", line[: len(line) - len(code_line)]):
            return True
    return False


def release_rows(release: Path, dataset: str) -> list[dict]:
    rows = []
    for shard in sorted((release / "data" / dataset).glob("shard-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="ascii") as handle:
            rows.extend(json.loads(line) for line in handle)
    return rows


def main(release: Path, dumps: list[Path]) -> None:
    posts = {}
    for dump in dumps:
        posts.update(load_posts(dump))
    code_pairs = code_kept = code_pairs_truncated = code_kept_whole = 0
    ol_items = ol_kept = ol_pairs = 0
    stock = 0
    pairs = 0
    for dataset in ("stackexchange_title_body", "stackexchange_question_answer", "stackexchange_duplicates"):
        for row in release_rows(release, dataset):
            pairs += 1
            text = row["query"] + "\n" + row["document"]
            stock += STOCK in text.casefold()
            if dataset == "stackexchange_duplicates":
                continue
            extra = json.loads(row["provenance"]["extra"])  # source-specific provenance (one release schema)
            site = extra["site"]
            ids = row["provenance"]["post_ids"]
            bodies = [posts[(site, post_id)].get("Body", "") for post_id in ids if (site, post_id) in posts]
            lines = text.split("\n")
            wanted = [line for body in bodies for line in indented_code_lines(body)]
            if wanted:
                truncated = "normalize" in extra
                code_pairs += 1
                code_pairs_truncated += truncated
                kept = all(keeps_line(lines, line) for line in wanted)
                code_kept += kept
                code_kept_whole += kept and not truncated
            items = [item for body in bodies for item in ordered_items(body)]
            if items:
                ol_pairs += 1
                for number, words in items:
                    ol_items += 1
                    # "2. > quoted" when the item is a block quote; "3." alone when it is empty
                    ol_kept += any(re.match(rf"\s*(> )*{number}\.(?: |$)(?:> )*{re.escape(words)}", line)
                                   for line in lines)
    print(f"release {release}: {pairs} pairs")
    print(f"indented code: {code_kept}/{code_pairs} pairs keep every indented code line "
          f"({100 * code_kept / max(code_pairs, 1):.1f}%); not truncated by length: "
          f"{code_kept_whole}/{code_pairs - code_pairs_truncated}")
    print(f"ordered lists: {ol_kept}/{ol_items} items read 'N. item' in {ol_pairs} pairs "
          f"({100 * ol_kept / max(ol_items, 1):.1f}%)")
    print(f"pairs containing '{STOCK}': {stock}")
    manifest = json.loads((release / "manifest.json").read_text())
    for item in manifest["inputs"]:
        path = next((dump.parent / item["name"] for dump in dumps if (dump.parent / item["name"]).exists()), None)
        dump_rows = (sum(1 for line in open(path, encoding="utf-8-sig") if line.strip().startswith("<row"))
                     if path else None)
        outcomes = item.get("rows_by_outcome", {})
        print(f"{item['name']}: <row> lines {dump_rows}, manifest rows {item.get('rows')}, "
              f"sum(rows_by_outcome) {sum(outcomes.values())}: {outcomes}")
    print(f"funnel read in (pair candidates): {manifest['funnel']['total'][0]['in']}; "
          f"input rows: {manifest['funnel'].get('input_rows', {}).get('rows')}; "
          f"warnings: {manifest['funnel'].get('input_rows', {}).get('warnings')}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])
