"""Beam counters under one naming scheme, for watching a run (the Dataflow console, the DirectRunner's result).

Namespace: the stage's name ("read", "normalize", ...). Names: ``in`` (pairs or rows that reached the stage),
``out`` (pairs it passed on), ``dropped_<reason>`` (its rejects by reason); any other name is a figure of that
stage alone (``blocks``, ``negatives_mined``). These are not the record: runners count differently (retries,
speculative work), so the funnel the graph computes from the data is what the manifest publishes.
"""

from __future__ import annotations

from apache_beam.metrics import Metrics

IN, OUT, DROPPED_PREFIX = "in", "out", "dropped_"


class StageMetrics:
    """The counters of one stage; created where the stage is built, incremented on the workers."""

    def __init__(self, stage: str):
        self.stage = stage
        self._counters: dict[str, object] = {}

    def count(self, name: str, amount: int = 1) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(self.stage, name)
        counter.inc(amount)

    def seen(self, amount: int = 1) -> None:
        self.count(IN, amount)

    def passed(self, amount: int = 1) -> None:
        self.count(OUT, amount)

    def dropped(self, reason: str, amount: int = 1) -> None:
        self.count(DROPPED_PREFIX + reason, amount)
