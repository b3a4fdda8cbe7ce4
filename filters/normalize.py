"""The `normalize` stage: Unicode normal form, whitespace, control characters, length bounds, query == document.

Everything a later stage compares (exact dedup keys, MinHash shingles, embeddings) sees the normalized text,
so two pairs that differ only in invisible ways are the same pair from here on.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import apache_beam as beam

from filters.stage import Stage
from pipelines.core.config import NormalizeConfig
from pipelines.core.metrics import StageMetrics
from pipelines.core.records import RejectPolicy, make_reject

STAGE = "normalize"

# C0/C1 controls except tab and newline, plus zero-width and bidi marks that only hide differences.
_CONTROL = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200d\u2060\ufeff\u202a-\u202e\u2066-\u2069]")
_INLINE_SPACE = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[^\S\n]*\n)+")


def normalize_text(text: str, config: NormalizeConfig) -> str:
    if config.unicode_form != "none":
        text = unicodedata.normalize(config.unicode_form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if config.strip_control_chars:
        text = _CONTROL.sub("", text)
    if config.collapse_whitespace:
        text = _INLINE_SPACE.sub(" ", text)
        text = _SPACE_AROUND_NEWLINE.sub("\n", text)
        text = _MANY_NEWLINES.sub("\n\n", text)
        return text.strip()
    # Whitespace is the source's: its reader already spaced the prose and kept code verbatim (StackExchange).
    # Only blank lines at the start and whitespace at the end go, so a first line of indented code keeps
    # its indentation.
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def truncate_words(text: str, max_chars: int, max_words: int) -> str:
    """Cut at the limits on a word boundary (mid-word only when one word is longer than half the limit)."""
    if len(text.split()) > max_words:
        kept, count = [], 0
        for token in re.split(r"(\s+)", text):
            if token and not token.isspace():
                count += 1
                if count > max_words:
                    break
            kept.append(token)
        text = "".join(kept).rstrip()
    if len(text) > max_chars:
        cut = text[:max_chars]
        boundary = max(cut.rfind(" "), cut.rfind("\n"))
        text = (cut[:boundary] if boundary > max_chars // 2 else cut).rstrip()
    return text


def _bounds(field: str, config: NormalizeConfig) -> tuple[int, int, int, int]:
    return (getattr(config, f"min_{field}_chars"), getattr(config, f"max_{field}_chars"),
            getattr(config, f"min_{field}_words"), getattr(config, f"max_{field}_words"))


def normalize_pair(pair: dict[str, Any], config: NormalizeConfig) -> tuple[dict[str, Any], str | None, dict]:
    """-> (normalized pair, None, {}) when kept, or (pair, reason, detail) when it must be dropped."""
    out = dict(pair)
    detail: dict[str, Any] = {}
    for field in ("query", "document"):
        value = pair.get(field)
        if not isinstance(value, str):
            return pair, f"missing_{field}", {}
        text = normalize_text(value, config)
        min_chars, max_chars, min_words, max_words = _bounds(field, config)
        words = len(text.split())
        if not text:
            return pair, f"empty_{field}", {}
        if len(text) < min_chars or words < min_words:
            return pair, f"{field}_too_short", {"chars": len(text), "words": words,
                                                 "min_chars": min_chars, "min_words": min_words}
        if len(text) > max_chars or words > max_words:
            if config.too_long == "reject":
                return pair, f"{field}_too_long", {"chars": len(text), "words": words,
                                                    "max_chars": max_chars, "max_words": max_words}
            detail[f"{field}_truncated_from_chars"] = len(text)
            text = truncate_words(text, max_chars, max_words)
        out[field] = text
    if config.drop_query_equals_document and out["query"].casefold() == out["document"].casefold():
        return pair, "query_equals_document", {}
    if detail:
        out["provenance"] = {**out.get("provenance", {}), "normalize": detail}
    return out, None, {}


class Normalize(beam.PTransform):
    def __init__(self, config: NormalizeConfig, policy: RejectPolicy):
        super().__init__()
        self.config = config
        self.policy = policy

    def expand(self, pairs):
        config, policy = self.config, self.policy
        metrics = StageMetrics(STAGE)

        def apply(pair):
            metrics.seen()
            normalized, reason, detail = normalize_pair(pair, config)
            if reason is None:
                metrics.passed()
                yield normalized
            else:
                metrics.dropped(reason)
                yield beam.pvalue.TaggedOutput("rejects", make_reject(
                    pair, stage=STAGE, reason=reason, detail=detail, policy=policy))

        result = pairs | "Normalize" >> beam.FlatMap(apply).with_outputs("rejects", main="pairs")
        return {"pairs": result.pairs, "rejects": result.rejects}


STAGE_SPEC = Stage(STAGE, config_key="normalize",
                   transform=lambda config, policy: Normalize(config.normalize, policy), per_source=True)
