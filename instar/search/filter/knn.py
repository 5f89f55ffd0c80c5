"""The `knn` filter: exact k-NN of the query's global descriptor by inner product, through faiss."""
from __future__ import annotations

import numpy as np

from ...core.protocols import FilterStage
from ...core.registry import FILTERS
from ..types import Database, Query, Ranking, masked_knn


@FILTERS.register("knn")
class GlobalKNN(FilterStage):
    """Exact k-NN of the query's global descriptor by inner product (cosine) over the global descriptors (removed images masked)."""

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        return self.search(db, query.vector, k)

    def search(self, db: Database, vector: np.ndarray, k: int) -> Ranking:
        scores, positions = masked_knn(db.vectors, vector, k, db.removed)
        return Ranking(positions, scores)
