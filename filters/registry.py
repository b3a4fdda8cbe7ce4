"""Every stage, in graph order: one line per stage, its name and the module that declares its ``STAGE_SPEC``
(see ``filters.stage``).

The graph, the command line (``--skip``), the funnel and the manifest know stages only through this list. Names
are read without importing the modules, so ``--help`` and command-line errors stay instant.
"""

from __future__ import annotations

import importlib

from filters.stage import Stage

STAGE_MODULES = {
    "normalize": "filters.normalize",
    "exact_dedup": "filters.exact_dedup",
    "minhash": "filters.minhash",
    "consistency": "filters.consistency",
    "negatives": "filters.negatives",
}


def stage_names() -> list[str]:
    return list(STAGE_MODULES)


def stages() -> list[Stage]:
    """The registered stages, in graph order (imports their modules)."""
    found = []
    for name, module in STAGE_MODULES.items():
        stage = importlib.import_module(module).STAGE_SPEC
        if stage.name != name:
            raise ValueError(f"filters.registry names {module} {name!r}, but its STAGE_SPEC is {stage.name!r}")
        found.append(stage)
    return found
