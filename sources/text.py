"""HTML and markup -> clean text, shared by the sources.

lxml's HTML parser does the parsing (fast, tolerant of broken markup, no network, no DTD loading); a walk of
its tree decides how the page a reader sees becomes plain text:

- paragraphs, headings and other blocks are separated by a blank line; ``<br>`` is a line break;
- ``<pre>`` code blocks keep every line break and all indentation, verbatim; inline ``<code>`` keeps its text;
- list items start on their own line: "1. item" in ordered lists (honouring ``start``), "- item" in others,
  nested lists and an item's later paragraphs indented under the item's text;
- block quotes prefix each line with "> "; table rows become lines with cells joined by " | ";
- links become their text, images their alt text (never StackExchange's stock "enter image description
  here"), always set apart from the neighbouring words;
- outside code, runs of whitespace become one space and lines are stripped, so the text needs no further
  whitespace collapsing (which would flatten the code blocks).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import lxml.etree
import lxml.html

_PARSER = lxml.html.HTMLParser(no_network=True, remove_comments=True, remove_pis=True, recover=True,
                               huge_tree=False, default_doctype=False)

_BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "header", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "figure",
    "figcaption", "details", "summary", "aside", "main", "nav", "center", "address", "form", "fieldset",
    "caption", "body", "html",
})
_DROPPED_TAGS = frozenset({"script", "style", "head", "title", "noscript", "template", "iframe", "object",
                           "svg", "button", "select", "input", "textarea"})
# Placeholder alt texts that StackExchange's image uploader writes when the author gave none.
STOCK_ALT_TEXTS = frozenset({"enter image description here"})
# Any whitespace (Unicode included: no-break, em, ideographic spaces) outside code becomes one space.
_SPACES = re.compile(r"\s+")
# Image Markdown the site failed to render ("[![enter image description here][1]][1]") shows on the page as
# literal text; with the stock alt text it says nothing, so it goes like the stock alt of a real image.
_STOCK_IMAGE_MARKDOWN = re.compile(
    r"\[?!\[enter image description here\](?:\[[^\]\n]*\]|\([^)\n]*\))?(?:\](?:\[[^\]\n]*\]|\([^)\n]*\))?)?",
    re.IGNORECASE)
# Beyond this depth the rest of a subtree is read as flat text (lxml already caps nesting at 256).
_MAX_DEPTH = 120
_MAX_LIST_START = 10**9


@dataclass
class _Line:
    text: str
    code: bool = False  # verbatim: never stripped, re-spaced or re-indented


class _Blocks:
    """Collects a run of blocks; inline text accumulates into the current paragraph until a block starts."""

    def __init__(self) -> None:
        self.blocks: list[list[_Line]] = []
        self._inline: list[str] = []

    def inline(self, text: str) -> None:
        # A line break in HTML source is a space on the page; only <br> breaks a line.
        self._inline.append(text.replace("\r", " ").replace("\n", " "))

    def line_break(self) -> None:
        self._inline.append("\n")

    def flush(self) -> None:
        if not self._inline:
            return
        text = "".join(self._inline)
        if "!" in text:
            text = _STOCK_IMAGE_MARKDOWN.sub(" ", text)
        lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
        self._inline = []
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            self.blocks.append([_Line(line) for line in lines])

    def block(self, lines: list[_Line]) -> None:
        self.flush()
        if lines:
            self.blocks.append(lines)

    def finish(self) -> list[list[_Line]]:
        self.flush()
        return self.blocks


def _tag(element) -> str:
    return element.tag.lower() if isinstance(element.tag, str) else ""


def _blocks_of(element, depth: int) -> list[list[_Line]]:
    out = _Blocks()
    _emit_children(element, out, depth)
    return out.finish()


def _emit_children(element, out: _Blocks, depth: int) -> None:
    if element.text:
        out.inline(element.text)
    for child in element:
        _emit(child, out, depth + 1)
        if child.tail:
            out.inline(child.tail)


def _emit(element, out: _Blocks, depth: int) -> None:
    tag = _tag(element)
    if not tag or tag in _DROPPED_TAGS:
        return  # comments, processing instructions, scripts (their tails are added by the caller)
    if depth > _MAX_DEPTH:
        out.inline(" " + element.text_content() + " ")
        return
    if tag == "br":
        out.line_break()
    elif tag == "img":
        alt = _SPACES.sub(" ", element.get("alt") or "").strip()
        if alt and alt.casefold() not in STOCK_ALT_TEXTS:
            out.inline(f" {alt} ")
        else:
            out.inline(" ")
    elif tag == "pre":
        out.block(_pre_lines(element))
    elif tag in ("ul", "ol", "menu", "dir"):
        out.block(_list_lines(element, ordered=tag == "ol", depth=depth))
    elif tag == "blockquote":
        out.block(_quote_lines(_join(_blocks_of(element, depth))))
    elif tag == "table":
        out.block(_table_lines(element))
    elif tag == "hr":
        out.flush()
    elif tag in ("dt", "dd", "li", "tr"):
        # Outside their usual parents: still a line of their own.
        out.flush()
        _emit_children(element, out, depth)
        out.flush()
    elif tag in _BLOCK_TAGS:
        out.flush()
        _emit_children(element, out, depth)
        out.flush()
    elif tag in ("td", "th"):
        out.inline(" ")
        _emit_children(element, out, depth)
        out.inline(" ")
    else:  # inline markup: a, code, em, strong, span, kbd, sup, sub, del, ...
        _emit_children(element, out, depth)


def _join(blocks: list[list[_Line]], separator_blank: bool = True) -> list[_Line]:
    lines: list[_Line] = []
    for block in blocks:
        if lines and separator_blank:
            lines.append(_Line(""))
        lines.extend(block)
    return lines


def _pre_lines(element) -> list[_Line]:
    text = element.text_content().replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return [_Line(line, code=True) for line in lines]


def _list_start(element) -> int:
    try:
        start = int((element.get("start") or "1").strip())
    except ValueError:
        return 1
    return start if -_MAX_LIST_START < start < _MAX_LIST_START else 1


def _list_lines(element, ordered: bool, depth: int) -> list[_Line]:
    number = _list_start(element)
    lines: list[_Line] = []
    if element.text and element.text.strip():
        lines.append(_Line(_SPACES.sub(" ", element.text).strip()))
    for child in element:
        tag = _tag(child)
        if tag == "li":
            marker = f"{number}. " if ordered else "- "
            number += 1
            content = _join(_blocks_of(child, depth + 1), separator_blank=False)
            lines.extend(_mark_item(content, marker))
        elif tag in ("ul", "ol"):
            # A list directly inside a list (old editors wrote this): nested under the previous item.
            nested = _list_lines(child, ordered=tag == "ol", depth=depth + 1)
            lines.extend(_indent(nested, "  "))
        elif tag:
            lines.extend(_join(_blocks_of(child, depth + 1), separator_blank=False))
        if child.tail and child.tail.strip():
            lines.append(_Line(_SPACES.sub(" ", child.tail).strip()))
    return lines


def _mark_item(content: list[_Line], marker: str) -> list[_Line]:
    if not content:
        return [_Line(marker.rstrip())]
    first, rest = content[0], content[1:]
    if first.code:  # an item that opens with a code block: the marker on its own line, code untouched
        head = [_Line(marker.rstrip()), first]
    else:
        head = [_Line(marker + first.text)]
    return head + _indent(rest, " " * len(marker))


def _indent(lines: list[_Line], prefix: str) -> list[_Line]:
    return [line if line.code or not line.text else _Line(prefix + line.text) for line in lines]


def _quote_lines(lines: list[_Line]) -> list[_Line]:
    return [_Line(("> " + line.text) if line.text else ">", code=line.code) for line in lines]


def _table_lines(element) -> list[_Line]:
    lines = []
    for row in element.iter("tr"):
        cells = []
        for cell in row:
            if _tag(cell) in ("td", "th"):
                text = " ".join(line.text.strip() for line in _join(_blocks_of(cell, 0)) if line.text.strip())
                cells.append(_SPACES.sub(" ", text).strip())
        if any(cells):
            lines.append(_Line(" | ".join(cells)))
    return lines


def html_to_text(markup: str) -> str:
    """An HTML fragment -> plain text as a reader sees it (see the module docstring for what is kept)."""
    if not markup or not markup.strip():
        return ""
    if "<" not in markup:
        return _SPACES.sub(" ", html.unescape(markup)).strip()
    try:
        root = lxml.html.fragment_fromstring(markup, create_parent="div", parser=_PARSER)
    except (lxml.etree.ParserError, ValueError):
        return _SPACES.sub(" ", html.unescape(markup)).strip()
    lines = _join(_blocks_of(root, 0))
    text = "\n".join(line.text if line.code else line.text.rstrip() for line in lines)
    # Only blank lines at the edges go: the first line may be an indented code line.
    return text.strip("\n").rstrip()


def plain_text(value: str) -> str:
    """A plain-text field (a StackExchange title): entities already resolved by the XML parser, never read
    as HTML ("the <img> tag" stays as written); whitespace runs become one space."""
    return _SPACES.sub(" ", value or "").strip()


def parse_tags(raw: str | None) -> list[str]:
    """StackExchange tags in either dump format: "<a><b>" (to 2023) or "|a|b|" (2024 on)."""
    if not raw:
        return []
    raw = raw.strip()
    if raw.startswith("<"):
        return [tag for tag in re.findall(r"<([^<>]+)>", raw) if tag]
    return [tag for tag in raw.strip("|").split("|") if tag]
