"""Deep Region Hashing's query expansions (sec. 3.2): `gqe` (before the re-ranker), `lqe`, and both (`gqe+lqe`)."""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...core import binary
from ...core.protocols import ExpansionStage
from ...core.registry import EXPANSIONS, Range
from ..codes import (code_bits, database_codes, database_region_codes, query_codes, region_matches,
                     reorder_head)
from ..types import Database, Query, Ranking


def global_query_expansion(db: Database, ranking: Ranking, q: int, top: int) -> Ranking:
    """gQE: the top `top` of `ranking` re-ordered by each image's min Hamming distance to the global codes of the top `q`."""
    m = min(top, len(ranking))
    if m == 0 or q < 1:
        return ranking
    codes = database_codes(db)
    head = np.asarray(codes[ranking.positions[:m]])
    d = binary.distances(head, head[:q]).min(axis=1)
    return reorder_head(ranking, d, 8 * codes.shape[1])


def local_query_expansion(db: Database, query: Query, ranking: Ranking, q: int, top: int) -> Ranking:
    """lQE: the region code nearest the query's in each of the top `q` images, compared with every region of the
    top `top`; each image re-scored by its min Hamming distance to any of them."""
    m = min(top, len(ranking))
    if m == 0 or q < 1:
        return ranking
    head = ranking.positions[:m]
    _, items, _ = region_matches(db, head[:q], query_codes(query)[None])
    items = items[items >= 0]
    if len(items) == 0:
        return ranking
    expansion = np.asarray(database_region_codes(db)[2][items])
    d, _, _ = region_matches(db, head, expansion)
    return reorder_head(ranking, d, code_bits(db))


def _check_q(q: int, top: int, who: str) -> None:
    if q < 1 or top < 1:
        raise ValueError(f"expansion.method = {who!r}: q and top must be at least 1 (got q = {q}, top = {top})")


@EXPANSIONS.register("gqe")
class GlobalRegionHashingQE(ExpansionStage):
    """gQE: the top M re-ordered by their best Hamming similarity to the global codes of the top q, before lDRH (DRH sec. 3.2)."""
    needs_codes = True

    def __init__(self, *, q: Annotated[int, Range(ge=1)] = 6, top: Annotated[int, Range(ge=1)] = 400):
        _check_q(q, top, "gqe")
        self.q, self.top = q, top

    def before_rerank(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        return global_query_expansion(db, ranking, self.q, self.top)

    def __call__(self, db, query, ranking, k):
        return ranking


@EXPANSIONS.register("lqe")
class LocalRegionHashingQE(ExpansionStage):
    """lQE: the best-matching region codes of the top q images vs every region of the top M, max similarity (DRH sec. 3.2)."""
    needs_codes = True
    needs_regions = True

    def __init__(self, *, q: Annotated[int, Range(ge=1)] = 6, top: Annotated[int, Range(ge=1)] = 400):
        _check_q(q, top, "lqe")
        self.q, self.top = q, top

    def __call__(self, db, query, ranking, k):
        return local_query_expansion(db, query, ranking, self.q, self.top)


@EXPANSIONS.register("gqe+lqe")
class RegionHashingQE(ExpansionStage):
    """gQE (q = `q_global`) before lDRH and lQE (q = `q_local`) after it: Table 3's full DRH (DRH sec. 3.2)."""
    needs_codes = True
    needs_regions = True

    def __init__(self, *, q_global: Annotated[int, Range(ge=1)] = 6, q_local: Annotated[int, Range(ge=1)] = 6, top: Annotated[int, Range(ge=1)] = 400):
        _check_q(q_global, top, "gqe+lqe")
        _check_q(q_local, top, "gqe+lqe")
        self.q_global, self.q_local, self.top = q_global, q_local, top

    def before_rerank(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        return global_query_expansion(db, ranking, self.q_global, self.top)

    def __call__(self, db, query, ranking, k):
        return local_query_expansion(db, query, ranking, self.q_local, self.top)
