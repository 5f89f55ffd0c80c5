"""The `ca-sr` re-ranker, Salvador et al.'s class-agnostic spatial re-ranking (sec. 3.3): each of the top N images
is scored by the best cosine similarity between the query box's region descriptor and the image's stored region
descriptors, and that region is the hit's box."""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...core.groups import group_reduce
from ...core.protocols import RerankStage
from ...core.registry import RERANKERS, Range
from ..types import Database, Query, Ranking


def best_regions(db: Database, query: Query, positions: np.ndarray, who: str) -> tuple[np.ndarray, np.ndarray]:
    """For each of `positions`: the max cosine between the query box descriptor and its regions, and that
    region's box (original pixels). (n,) float32, (n, 4) float32 (NaN where an image has no region)."""
    table = db.require_regions(who, descriptors=True, compact=True)
    sims, items = table.similarities(positions, query.box_descriptor)
    scores, best = group_reduce(sims, table.counts[positions], "max")
    boxes = np.full((len(positions), 4), np.nan, np.float32)
    ok = best >= 0
    boxes[ok] = table.boxes[items[best[ok]]]
    return scores, boxes


@RERANKERS.register("ca-sr")
class CASR(RerankStage):
    """CA-SR: the top N re-scored by their best region's cosine with the query box (Salvador et al. sec. 3.3)."""
    needs_regions = True
    reads_region_descriptors = True
    scores_compact_regions = True

    def __init__(self, *, top: Annotated[int, Range(ge=1)] = 100):
        self.top = top

    def __call__(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        n = min(self.top, len(ranking))
        scores, boxes = best_regions(db, query, ranking.positions[:n], "rerank.method = 'ca-sr'")
        return ranking.rescore_head(scores, boxes)

    def localise(self, db: Database, query: Query, positions: np.ndarray) -> np.ndarray:
        """The box of the best-matching region in each image, (n, 4) float32."""
        return best_regions(db, query, positions, "rerank.method = 'ca-sr'")[1]
