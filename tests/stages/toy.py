"""A toy stage, written the way a real one is added: this module plus one line in filters.registry."""

from __future__ import annotations

import apache_beam as beam

from filters.stage import Stage
from pipelines.core.records import RejectPolicy, make_reject

STAGE = "toy"


def toy_decision(pair: dict) -> str | None:
    """The reason to drop a pair, or None to keep it."""
    return "mentions_toy" if "toy" in pair["query"].lower() else None


class DropToys(beam.PTransform):
    def __init__(self, policy: RejectPolicy):
        super().__init__()
        self.policy = policy

    def expand(self, pairs):
        policy = self.policy

        def apply(pair):
            reason = toy_decision(pair)
            if reason is None:
                yield pair
            else:
                yield beam.pvalue.TaggedOutput("rejects", make_reject(pair, stage=STAGE, reason=reason,
                                                                      policy=policy))

        result = pairs | "DropToys" >> beam.FlatMap(apply).with_outputs("rejects", main="pairs")
        report = pairs.pipeline | "ToyReport" >> beam.Create([{"stage": STAGE, "rule": "query mentions toy"}])
        return {"pairs": result.pairs, "rejects": result.rejects, "report": report}


STAGE_SPEC = Stage(STAGE, config_key=None, transform=lambda config, policy: DropToys(policy))
