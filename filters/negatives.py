"""The `negatives` stage: hard negatives for every kept pair, mined from the search the `consistency` stage
runs anyway (``filters.consistency``: one embedding pass, one batched search per block, both stages'
decisions). Which candidates qualify (range, margins, sampling, shortage) is ``filters.negatives_kernel``.
"""

from __future__ import annotations

from filters.consistency import EMBED_AND_SEARCH, NEGATIVES_STAGE
from filters.stage import Stage

STAGE_SPEC = Stage(NEGATIVES_STAGE, config_key="negatives", shared=EMBED_AND_SEARCH)
