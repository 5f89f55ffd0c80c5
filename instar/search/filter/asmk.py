"""The `asmk` filter: aggregated match kernel search (Detect-to-Retrieve eq. 1) through the index's inverted file;
with regions stored separately an image scores the max (eq. 3) or the mean (eq. 4) of its regions."""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...asmk import inverted_file
from ...asmk.kernel import Aggregated
from ...core.groups import reduce_items, top_k
from ...core.protocols import FilterStage
from ...core.registry import FILTERS, Range
from ...extract.pooling.asmk import ASMKPooling
from ...store.columns import ASMK_BOXES
from ..types import Database, Query, Ranking


def asmk_stage(query: Query, who: str) -> ASMKPooling:
    extractor = query.extractor
    if extractor is None or query.image is None:
        raise ValueError(f"{who} needs the query image (its local features), not only a ready descriptor")
    stage = extractor.pooling
    if not isinstance(stage, ASMKPooling):
        raise ValueError(f"{who} needs an index whose pooling.method is 'asmk'")
    return stage


def query_aggregated(query: Query, stage: ASMKPooling) -> Aggregated:
    return query.memo(("asmk", id(stage)), lambda: stage.query_representation(query.features))


@FILTERS.register("asmk", choices={"pooling": ("max", "mean")})
class ASMKSearch(FilterStage):
    """Aggregated match kernel search (eq. 1) through the inverted file; with regions stored separately an image scores the max (eq. 3) or mean (eq. 4) of its regions."""

    def __init__(self, *, alpha: Annotated[float, Range(gt=0)] = 3.0, tau: Annotated[float, Range(ge=-1, lt=1)] = 0.0, pooling: str = "max"):
        if alpha <= 0:
            raise ValueError(f"filter.alpha = {alpha}: the selectivity exponent must be positive")
        self.alpha, self.tau, self.pooling = alpha, tau, pooling

    @staticmethod
    def requires(sections) -> str | None:
        if sections["pooling"]["method"] != "asmk":
            return "filter.method 'asmk' searches aggregated local features: set pooling.method = 'asmk'"
        return None

    def item_scores(self, db: Database, query: Query) -> tuple[np.ndarray, np.ndarray, ASMKPooling]:
        """Every stored item's kernel with the query, and each item's database position (-1: not in `db`: a
        removed image, or one committed after `db`'s snapshot)."""
        stage = asmk_stage(query, "filter.method = 'asmk'")
        if db.snapshot is None:
            raise ValueError("filter.method = 'asmk' searches an index's inverted file: build the Database from an index")
        ivf = inverted_file.for_snapshot(db.snapshot, stage.k, separate=stage.separate)
        scores = ivf.scores(query_aggregated(query, stage), kernel=stage.kernel, alpha=self.alpha, tau=self.tau)
        # positions are store rows: an item's image is its row, unless not in this snapshot or removed
        pos = np.where(ivf.item_row < len(db), ivf.item_row, -1)
        if db.removed is not None:
            pos[(pos >= 0) & db.removed[np.maximum(pos, 0)]] = -1
        return scores, pos, stage

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        scores, pos, stage = self.item_scores(db, query)
        how = self.pooling if stage.separate else "single"
        image, best = reduce_items(scores, pos, len(db), how)
        if db.removed is not None:
            image[db.removed] = -np.inf
        order = top_k(image, min(k, db.n_live))
        if how != "max":
            return Ranking(order.astype(np.int64), image[order])
        boxes = np.full((len(order), 4), np.nan, np.float32)
        chosen = best[order]
        have = chosen >= 0
        if have.any():  # the boxes column holds one box per item, appended in step with the gamma column
            boxes[have] = np.asarray(db.snapshot.column(ASMK_BOXES)[chosen[have]])
        return Ranking(order.astype(np.int64), image[order], boxes)
