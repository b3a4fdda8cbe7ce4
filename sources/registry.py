"""Source names on the command line -> the module that implements them."""

from __future__ import annotations

import importlib

from sources.base import Source

# Generic jsonl / parquet / hf share one module; each name is its own Source.
SOURCE_MODULES = {
    "stackexchange": "sources.stackexchange",
    "quora": "sources.quora",
    "amazon": "sources.amazon",
    "news": "sources.news",
    "jsonl": "sources.generic",
    "parquet": "sources.generic",
    "hf": "sources.generic",
}


def source_names() -> list[str]:
    return list(SOURCE_MODULES)


def get_source(name: str) -> Source:
    """The Source for a name. Raises KeyError for an unknown name."""
    module = importlib.import_module(SOURCE_MODULES[name])
    sources = getattr(module, "SOURCES", None)
    if sources is not None:
        return sources[name]
    return module.SOURCE
