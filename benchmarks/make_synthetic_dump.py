"""Write a StackExchange site dump N times the size of a real one, in the real format, for scale benchmarks.

    python benchmarks/make_synthetic_dump.py --sample ../shared/data/stackexchange/cardano.stackexchange.com \\
        --copies 16 --out /tmp/synthetic

writes /tmp/synthetic/cardano.stackexchange.com/{Posts.xml,PostLinks.xml}: the sample's rows N times. Copy 0
is the sample byte for byte; copy k > 0 has every post and link id shifted by k x OFFSET (OFFSET: the power of
ten above the largest id), with ParentId, AcceptedAnswerId, PostId and RelatedPostId shifted alike, so answers,
accepted answers and duplicate links stay consistent inside each copy. So that the copies are neither exact
nor near duplicates of each other (which would let the dedup stages shrink the load back to 1x), copy k also
maps each word of the titles and bodies (outside HTML tags and entities) through its own permutation of the
sample's vocabulary among words of the same length: the word frequencies, text lengths in bytes, HTML
structure and escaping stay those of the real dump, only which word is which changes. Lines keep the dump's
layout (BOM, header, one ``<row .../>`` per line, CRLF where the sample has it), so the splittable line read
and the row parser see a real-format file.
"""

from __future__ import annotations

import argparse
import html
import math
import random
import re
import sys
from pathlib import Path

_ID_ATTRIBUTES = {
    "Posts.xml": ("Id", "ParentId", "AcceptedAnswerId"),
    "PostLinks.xml": ("Id", "PostId", "RelatedPostId"),
}
_TEXT_ATTRIBUTES = ("Title", "Body")
_WORD = re.compile(r"[A-Za-z]{3,}")
# HTML inside an unescaped Body: tags and entities are kept, only the text between them is rewritten.
_MARKUP = re.compile(r"(<[^>]*>|&#?\w+;)")


def _id_pattern(names: tuple[str, ...]) -> re.Pattern:
    return re.compile(r'(?<= )(' + "|".join(names) + r')="(\d+)"')


def _text_pattern() -> re.Pattern:
    return re.compile(r'(?<= )(' + "|".join(_TEXT_ATTRIBUTES) + r')="([^"]*)"')


def escape_attribute(value: str) -> str:
    """XML attribute escaping as the dumps write it (newlines as character references)."""
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\r", "&#xD;").replace("\n", "&#xA;").replace("\t", "&#x9;"))


def vocabulary(posts_lines: list[str]) -> list[str]:
    """Every distinct lower-cased word (3+ letters) of the titles and bodies, sorted."""
    words: set[str] = set()
    text_attributes = _text_pattern()
    for line in posts_lines:
        for _, raw in text_attributes.findall(line):
            for segment in _MARKUP.split(html.unescape(raw)):
                if not _MARKUP.fullmatch(segment or " "):
                    words.update(word.lower() for word in _WORD.findall(segment))
    return sorted(words)


def word_mapping(words: list[str], copy: int) -> dict[str, str]:
    """Copy 0: identity. Copy k: a permutation of the vocabulary seeded by k, within words of one length, so
    that every text keeps its exact length in bytes."""
    if copy == 0:
        return {word: word for word in words}
    by_length: dict[int, list[str]] = {}
    for word in words:
        by_length.setdefault(len(word), []).append(word)
    mapping = {}
    generator = random.Random(f"synthetic-copy-{copy}")
    for length in sorted(by_length):
        group = by_length[length]
        shuffled = list(group)
        generator.shuffle(shuffled)
        mapping.update(zip(group, shuffled))
    return mapping


def _recase(template: str, word: str) -> str:
    if template.isupper():
        return word.upper()
    if template[0].isupper():
        return word[0].upper() + word[1:]
    return word


def rewrite_text(text: str, mapping: dict[str, str]) -> str:
    parts = _MARKUP.split(text)
    for index, segment in enumerate(parts):
        if index % 2 == 0:  # text between markup (split keeps markup at odd indexes)
            parts[index] = _WORD.sub(lambda m: _recase(m.group(0), mapping.get(m.group(0).lower(),
                                                                             m.group(0).lower())), segment)
    return "".join(parts)


def rewrite_row(line: str, copy: int, offset: int, id_pattern: re.Pattern, mapping: dict[str, str] | None) -> str:
    """One ``<row .../>`` line of copy ``copy``: ids shifted, words mapped (copy 0 is returned unchanged)."""
    if copy == 0:
        return line
    line = id_pattern.sub(lambda m: f'{m.group(1)}="{int(m.group(2)) + copy * offset}"', line)
    if mapping is not None:
        line = _text_pattern().sub(
            lambda m: f'{m.group(1)}="{escape_attribute(rewrite_text(html.unescape(m.group(2)), mapping))}"',
            line)
    return line


def _split_dump(data: bytes) -> tuple[list[str], list[str], list[str], str]:
    """(header lines, row lines, footer lines, line ending) of a dump file, each line without its ending."""
    text = data.decode("utf-8")
    ending = "\r\n" if "\r\n" in text else "\n"
    lines = text.split(ending)
    if lines and lines[-1] == "":
        lines.pop()
    first_row = next(i for i, line in enumerate(lines) if line.lstrip().startswith("<row"))
    last_row = max(i for i, line in enumerate(lines) if line.lstrip().startswith("<row"))
    return lines[:first_row], lines[first_row:last_row + 1], lines[last_row + 1:], ending


def id_offset(row_lines: list[str]) -> int:
    largest = max(int(value) for line in row_lines for value in re.findall(r'(?<= )Id="(\d+)"', line))
    return 10 ** max(1, math.ceil(math.log10(largest + 1)))


def write_synthetic(sample: Path, copies: int, out_root: Path) -> dict[str, int]:
    """Write the N-copy dump under out_root/<site>/; returns rows written per file."""
    if copies < 1:
        raise ValueError("copies must be >= 1")
    target = out_root / sample.name
    target.mkdir(parents=True, exist_ok=True)
    posts = _split_dump((sample / "Posts.xml").read_bytes())
    offset = id_offset(posts[1])
    words = vocabulary(posts[1])
    mappings = [word_mapping(words, copy) for copy in range(copies)]
    written = {}
    for name in ("Posts.xml", "PostLinks.xml"):
        source = sample / name
        if not source.exists():
            continue
        header, rows, footer, ending = posts if name == "Posts.xml" else _split_dump(source.read_bytes())
        id_pattern = _id_pattern(_ID_ATTRIBUTES[name])
        with open(target / name, "w", encoding="utf-8", newline="") as handle:
            for line in header:
                handle.write(line + ending)
            for copy in range(copies):
                mapping = mappings[copy] if name == "Posts.xml" else None
                for line in rows:
                    handle.write(rewrite_row(line, copy, offset, id_pattern, mapping) + ending)
            for line in footer:
                handle.write(line + ending)
        written[name] = len(rows) * copies
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", required=True, type=Path, help="a site dump folder (Posts.xml, PostLinks.xml)")
    parser.add_argument("--copies", required=True, type=int, help="how many times the sample's rows")
    parser.add_argument("--out", required=True, type=Path, help="folder to write <site>/Posts.xml into")
    args = parser.parse_args(argv)
    if not (args.sample / "Posts.xml").is_file():
        print(f"error: no Posts.xml in {args.sample}", file=sys.stderr)
        return 2
    written = write_synthetic(args.sample, args.copies, args.out)
    sizes = ", ".join(f"{name}: {rows} rows, {(args.out / args.sample.name / name).stat().st_size:,} bytes"
                      for name, rows in written.items())
    print(f"{args.out / args.sample.name}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
