"""HTML and markup -> clean text, shared by the sources.

lxml's HTML parser does the parsing (fast, tolerant of broken markup, no network, no DTD loading); we only
decide how block structure becomes line breaks: paragraphs and list items on their own lines, code blocks
kept verbatim, inline markup dropped, entities resolved.
"""

from __future__ import annotations

import html
import re

import lxml.etree
import lxml.html

_PARSER = lxml.html.HTMLParser(no_network=True, remove_comments=True, remove_pis=True, recover=True,
                               huge_tree=False, default_doctype=False)

_BLOCK_TAGS = frozenset({
    "p", "div", "blockquote", "section", "article", "header", "footer", "table", "tr", "ul", "ol", "dl",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "figure", "details", "summary", "aside", "main", "nav",
})
_DROPPED_TAGS = frozenset({"script", "style", "head", "title", "noscript", "template", "iframe", "object"})
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")


def _walk(element, out: list[str], in_pre: bool) -> None:
    tag = element.tag if isinstance(element.tag, str) else ""
    tag = tag.lower()
    if tag in _DROPPED_TAGS:
        if element.tail:
            out.append(element.tail if in_pre else _SPACES.sub(" ", element.tail))
        return
    is_pre = in_pre or tag == "pre"
    if tag in _BLOCK_TAGS or tag == "pre":
        out.append("\n\n")
    elif tag == "li":
        out.append("\n- ")
    elif tag in ("dt", "dd", "td", "th"):
        out.append("\n" if tag in ("dt", "dd") else " ")
    elif tag == "br":
        out.append("\n")
    elif tag == "img":
        alt = element.get("alt")
        if alt:
            out.append(alt)
    if element.text:
        out.append(element.text if is_pre else _SPACES.sub(" ", element.text))
    for child in element:
        _walk(child, out, is_pre)
    if tag in _BLOCK_TAGS or tag == "pre":
        out.append("\n\n")
    if element.tail:
        out.append(element.tail if in_pre else _SPACES.sub(" ", element.tail))


def html_to_text(markup: str) -> str:
    """An HTML fragment -> plain text with paragraph breaks; code blocks keep their lines."""
    if not markup or not markup.strip():
        return ""
    if "<" not in markup:
        return html.unescape(markup).strip()
    try:
        root = lxml.html.fragment_fromstring(markup, create_parent="div", parser=_PARSER)
    except (lxml.etree.ParserError, ValueError):
        return html.unescape(markup).strip()
    pieces: list[str] = []
    _walk(root, pieces, False)
    text = "".join(pieces)
    # Trailing spaces at line ends come from inline whitespace next to block breaks.
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def parse_tags(raw: str | None) -> list[str]:
    """StackExchange tags in either dump format: "<a><b>" (to 2023) or "|a|b|" (2024 on)."""
    if not raw:
        return []
    raw = raw.strip()
    if raw.startswith("<"):
        return [tag for tag in re.findall(r"<([^<>]+)>", raw) if tag]
    return [tag for tag in raw.strip("|").split("|") if tag]
