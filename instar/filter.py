"""Filter stage: rank the whole database for a query (the first, exhaustive step of search).

Entries of `FILTERS` (a preset's `filter.method`): `knn` (global descriptors, exact inner product through
faiss) and `regional` (every stored region an item of its own, an image scored by the max or the mean of its
regions' similarities: Teichmann et al.'s regional search, eq. 3 and 4).
"""
from __future__ import annotations

import numpy as np

from .registry import FILTERS
from .search import Database, Query, Ranking, knn


@FILTERS.register("knn")
class GlobalKNN:
    """Exact k-NN of the query's global descriptor by inner product (cosine) over the global descriptors."""

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        return self.search(db, query.vector, k)

    def search(self, db: Database, vector: np.ndarray, k: int) -> Ranking:
        scores, positions = knn(db.vectors, vector[None, :], k)
        return Ranking(positions[0], scores[0])


def _reduce(values: np.ndarray, counts: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-group max (with the arg-max item) or mean of `values` (T,) grouped in runs of `counts` (N,)."""
    n = len(counts)
    out = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    nonempty = counts > 0
    if not nonempty.any():
        return out, arg
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
    if how == "max":
        out[nonempty] = np.maximum.reduceat(values, starts)
        # the first item of each group reaching the max
        group = np.repeat(np.arange(n), counts)
        hit = values >= out[group] - 1e-7
        first = np.flatnonzero(hit)
        g = group[first]
        keep = np.concatenate([[True], g[1:] != g[:-1]])
        arg[g[keep]] = first[keep]
    else:
        out[nonempty] = np.add.reduceat(values, starts) / counts[nonempty]
    return out, arg


@FILTERS.register("regional", choices={"pooling": ("max", "mean")})
class RegionalSearch:
    """Regional search (Teichmann et al. sec. 4.2): the query's region descriptor against every stored region;
    an image scores the max (eq. 3) or the mean (eq. 4) of its regions' similarities; max localises."""
    needs_regions = True
    reads_region_descriptors = True

    def __init__(self, *, pooling: str = "max"):
        self.pooling = pooling

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        table = db.require_regions("filter.method = 'regional'", descriptors=True)
        sims, items = table.similarities(np.arange(len(db)), query.box_descriptor)
        scores, best = _reduce(sims, table.counts, self.pooling)
        order = np.argsort(-scores, kind="stable")[:k]
        boxes = None
        if self.pooling == "max":
            boxes = np.full((len(order), 4), np.nan, np.float32)
            ok = best[order] >= 0
            boxes[ok] = table.boxes[items[best[order][ok]]]
        return Ranking(order.astype(np.int64), scores[order], boxes)
