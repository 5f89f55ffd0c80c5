"""The `hamming` filter (gDRH, Deep Region Hashing sec. 3.2): every image ranked by the Hamming distance between
its global code and the query's, exact, through faiss's Hamming heap (`instar.core.binary.knn`)."""
from __future__ import annotations

from ...core import binary
from ...core.protocols import FilterStage
from ...core.registry import FILTERS
from ..codes import database_codes, query_codes, similarity
from ..types import Database, Query, Ranking


@FILTERS.register("hamming")
class GlobalRegionHashingSearch(FilterStage):
    """gDRH: every image ranked by the Hamming distance between its global region code and the query's (DRH sec. 3.2)."""
    needs_codes = True

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        codes = database_codes(db)
        if db.removed is None:
            d, positions = binary.knn(codes, query_codes(query)[None], k)
            return Ranking(positions[0], similarity(d[0], 8 * codes.shape[1]))
        # removed images masked: the top k + (number removed) holds the top k live ones
        d, positions = binary.knn(codes, query_codes(query)[None], k + len(db) - db.n_live)
        keep = ~db.removed[positions[0]]
        return Ranking(positions[0][keep][:k], similarity(d[0][keep][:k], 8 * codes.shape[1]))
