"""The `exact_dedup` stage: pairs equal after normalization (and case folding) collapse to one survivor.

The survivor is chosen by an explicit rule over the whole group (longest document, then smallest id; or
smallest id), so neither arrival order nor the runner decides which copy is kept.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import apache_beam as beam

from filters.stage import Stage
from pipelines.core.config import ExactDedupConfig
from pipelines.core.metrics import StageMetrics
from pipelines.core.records import RejectPolicy, make_reject

STAGE = "exact_dedup"


def dedup_key(pair: dict[str, Any], config: ExactDedupConfig) -> str:
    if config.key == "pair":
        parts = [pair["query"], pair["document"]]
    else:
        parts = [pair[config.key]]
    if config.casefold:
        parts = [part.casefold() for part in parts]
    if config.scope == "dataset":
        parts.insert(0, pair["dataset"])
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:32]


def survivor_rank(pair: dict[str, Any], rule: str) -> tuple:
    """Sort key: the smallest sorts first and survives."""
    if rule == "longest_document":
        return (-len(pair["document"]), pair["id"])
    return (pair["id"],)


def choose_survivor(pairs: Iterable[dict[str, Any]], rule: str) -> dict[str, Any]:
    return min(pairs, key=lambda pair: survivor_rank(pair, rule))


def split_group(pairs: Iterable[dict[str, Any]], rule: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A group of equal pairs -> (survivor, the others)."""
    members = sorted(pairs, key=lambda pair: survivor_rank(pair, rule))
    return members[0], members[1:]


class ExactDedup(beam.PTransform):
    def __init__(self, config: ExactDedupConfig, policy: RejectPolicy):
        super().__init__()
        self.config = config
        self.policy = policy

    def expand(self, pairs):
        config, policy = self.config, self.policy
        metrics = StageMetrics(STAGE)

        def resolve(element):
            key, group = element
            # Two passes over the grouped iterable (re-iterable in Beam) instead of one list: a hot key such
            # as a boilerplate title need not fit in memory twice.
            survivor = choose_survivor(group, config.survivor)
            yield survivor
            survivor_passed = False
            for pair in group:
                # Skip the survivor once: a second row with the same id (the same input given twice) is a
                # duplicate like any other.
                if not survivor_passed and pair["id"] == survivor["id"]:
                    survivor_passed = True
                    continue
                metrics.dropped("exact_duplicate")
                yield beam.pvalue.TaggedOutput("rejects", make_reject(
                    pair, stage=STAGE, reason="exact_duplicate",
                    detail={"survivor_id": survivor["id"], "survivor_dataset": survivor["dataset"], "key": key,
                            "rule": config.survivor},
                    policy=policy))

        result = (pairs
                  | "Key" >> beam.Map(lambda pair: (dedup_key(pair, config), pair))
                  | "Group" >> beam.GroupByKey()
                  | "Resolve" >> beam.FlatMap(resolve).with_outputs("rejects", main="pairs"))
        return {"pairs": result.pairs, "rejects": result.rejects}


STAGE_SPEC = Stage(STAGE, config_key="exact_dedup",
                   transform=lambda config, policy: ExactDedup(config.exact_dedup, policy))
