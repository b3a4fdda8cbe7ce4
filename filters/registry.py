"""Every stage, in graph order: one line per stage module (each declares ``STAGE_SPEC``, see ``filters.stage``).

The graph, the command line (``--skip``), the funnel and the manifest know stages only through this list.
"""

from __future__ import annotations

import importlib

from filters.stage import Stage

STAGE_MODULES = [
    "filters.normalize",
    "filters.exact_dedup",
    "filters.minhash",
    "filters.consistency",
    "filters.negatives",
]


def stages() -> list[Stage]:
    """The registered stages, in graph order."""
    return [importlib.import_module(module).STAGE_SPEC for module in STAGE_MODULES]


def stage_names() -> list[str]:
    return [stage.name for stage in stages()]
