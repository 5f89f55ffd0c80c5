"""The `ldrh` re-ranker (lDRH, Deep Region Hashing sec. 3.2): the top M re-scored by the minimum Hamming distance
between the query's code and their region codes; that region is the hit's box."""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...core.protocols import RerankStage
from ...core.registry import RERANKERS, Range
from ..codes import code_bits, query_codes, region_boxes, region_matches, reorder_head
from ..types import Database, Query, Ranking


@RERANKERS.register("ldrh")
class LocalRegionHashing(RerankStage):
    """lDRH: the top M images re-scored by the min Hamming distance between the query code and their region codes (DRH sec. 3.2)."""
    needs_regions = True
    needs_codes = True

    def __init__(self, *, top: Annotated[int, Range(ge=1)] = 400):
        if top < 1:
            raise ValueError(f"rerank.top = {top}: must be at least 1")
        self.top = top

    def __call__(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        m = min(self.top, len(ranking))
        head = ranking.positions[:m]
        d, _, offsets = region_matches(db, head, query_codes(query)[None])
        boxes = region_boxes(db, head, offsets, "rerank.method = 'ldrh'")
        return reorder_head(ranking, d, code_bits(db), boxes)

    def localise(self, db: Database, query: Query, positions: np.ndarray) -> np.ndarray:
        """The box of each image's region whose code is nearest the query's, (n, 4) float32."""
        positions = np.asarray(positions, dtype=np.int64)
        _, _, offsets = region_matches(db, positions, query_codes(query)[None])
        return region_boxes(db, positions, offsets, "rerank.method = 'ldrh'")
