"""The Stage contract: what the graph needs to know about a stage, and nothing else.

A stage is one module in ``filters/`` that declares ``STAGE_SPEC = Stage(...)`` and is named once in
``filters.registry.STAGE_MODULES``. Its transform is a composite ``beam.PTransform`` that takes the pair
PCollection and returns ``{"pairs", "rejects"}`` plus, optionally, ``"report"`` (one dict for the manifest's
``stage_reports``, keyed by its ``"stage"``) and ``"query_vectors"`` ((query text key, float16 vector bytes)
for every query it embedded: the report's map places pairs with them instead of embedding the queries again).
Everything it drops goes to ``rejects`` with ``stage`` = its name (the funnel counts those); the reject policy
it is given decides what a reject may carry.

Stages that share one expensive step (consistency and negatives: one embedding pass and one search per block)
name the same ``SharedStep``; the graph runs consecutive active stages with the same step as one transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pipelines.core.records import RejectPolicy

if TYPE_CHECKING:  # Beam is not imported to list stage names (--help stays instant)
    import apache_beam as beam

# (the whole configuration, the reject policy) -> the stage's composite transform.
StageTransform = Callable[[Any, RejectPolicy], "beam.PTransform"]
# (the whole configuration, the reject policy, the names of the active stages that share it) -> one transform.
SharedTransform = Callable[[Any, RejectPolicy, tuple[str, ...]], "beam.PTransform"]


@dataclass(frozen=True)
class SharedStep:
    """One step several stages run over (e.g. embed-and-search); ``name`` labels it in the graph."""

    name: str
    transform: SharedTransform
    # A model must load before the run (the build checks it and records it in the manifest).
    needs_model: bool = False


@dataclass(frozen=True)
class Stage:
    """One curation stage.

    name: its name on the command line (``--skip NAME``), in the funnel, in rejects and in stage_reports.
    config_key: its section of the configuration (None: it has none); the section's ``enabled: false`` turns
      the stage off like --skip (and is recorded the same way, in the manifest's skipped_stages).
    transform: builds its composite transform (unused when it runs inside ``shared``).
    shared: the shared step it runs inside, if any.
    per_source: in a mixture, run per source with its own config (normalize), not once over the union.
    """

    name: str
    config_key: str | None
    transform: StageTransform | None = None
    shared: SharedStep | None = None
    # In a mixture build: runs on each source's pairs with that source's own settings, before the sources
    # meet (False: runs once over the union with the mixture's shared settings).
    per_source: bool = False

    def __post_init__(self):
        if (self.transform is None) == (self.shared is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of transform or shared")

    def section(self, config: Any) -> Any:
        return getattr(config, self.config_key) if self.config_key else None

    def enabled(self, config: Any) -> bool:
        return bool(getattr(self.section(config), "enabled", True))

    @property
    def needs_model(self) -> bool:
        return self.shared is not None and self.shared.needs_model
