"""The `regional` filter (Teichmann et al. sec. 4.2): every stored region an item of its own; an image scores the
max (eq. 3) or the mean (eq. 4) of its regions' similarities with the query's region descriptor."""
from __future__ import annotations

import numpy as np

from ...core.groups import group_reduce
from ...core.protocols import FilterStage
from ...core.registry import FILTERS
from ..types import Database, Query, Ranking


@FILTERS.register("regional", choices={"pooling": ("max", "mean")})
class RegionalSearch(FilterStage):
    """Regional search (Teichmann et al. sec. 4.2): the query's region descriptor against every stored region;
    an image scores the max (eq. 3) or the mean (eq. 4) of its regions' similarities; max localises."""
    needs_regions = True
    reads_region_descriptors = True
    scores_compact_regions = True

    def __init__(self, *, pooling: str = "max"):
        self.pooling = pooling

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        table = db.require_regions("filter.method = 'regional'", descriptors=True, compact=True)
        live = db.live_positions()  # removed images are never scored
        sims, items = table.similarities(live, query.box_descriptor)
        scores, best = group_reduce(sims, table.counts[live], self.pooling)
        order = np.argsort(-scores, kind="stable")[:k]
        boxes = None
        if self.pooling == "max":
            boxes = np.full((len(order), 4), np.nan, np.float32)
            ok = best[order] >= 0
            boxes[ok] = table.boxes[items[best[order][ok]]]
        return Ranking(live[order], scores[order], boxes)
