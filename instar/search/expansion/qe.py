"""Query expansion: a new query from the query and its top-ranked neighbours, searched again.

The functions are the formulas; the entries of `EXPANSIONS` (a preset's `expansion.method`) are the stages:
they build the new global query from the top `top` images of the (re-ranked) ranking and search the global
descriptors again with it (Salvador et al. sec. 3.3: QE after spatial re-ranking).
"""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...core.norms import l2n
from ...core.protocols import ExpansionStage
from ...core.registry import EXPANSIONS, Range
from ..filter.knn import GlobalKNN


def average_query_expansion(query: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Average QE (Chum et al.; Salvador et al. sec. 3.3): L2(q + sum of the top-M descriptors).

    query (Q, D), neighbours (Q, M, D) float32 -> (Q, D) float32, L2-normalised.
    """
    return l2n(query + neighbours.sum(axis=1))


def alpha_query_expansion(query: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, alpha: Annotated[float, Range(ge=0)] = 3.0) -> np.ndarray:
    """alpha-QE (Radenović et al.; survey sec. 4): L2(q + sum_i max(s_i, 0)^alpha x_i) over the top-M.

    query (Q, D), neighbours (Q, M, D), similarities (Q, M) -> (Q, D) float32, L2-normalised.
    alpha = 0 weights every neighbour 1, i.e. average QE.
    """
    w = np.maximum(similarities, 0.0) ** alpha
    return l2n(query + (w[..., None] * neighbours).sum(axis=1))


@EXPANSIONS.register("none")
class NoExpansion(ExpansionStage):
    """No query expansion."""
    top = 0

    def __call__(self, db, query, ranking, k):
        return ranking


def _search_global(db, vector: np.ndarray, k: int):
    return GlobalKNN().search(db, vector, k)


@EXPANSIONS.register("aqe")
class AverageQE(ExpansionStage):
    """Average QE over the top `top` images (Chum et al.; Salvador et al. sec. 3.3, M = 5)."""

    def __init__(self, *, top: Annotated[int, Range(ge=1)] = 10):
        self.top = top

    def __call__(self, db, query, ranking, k):
        m = min(self.top, len(ranking))
        if m == 0:
            return ranking
        neighbours = np.asarray(db.vectors[ranking.positions[:m]], dtype=np.float32)[None]
        return _search_global(db, average_query_expansion(query.vector[None], neighbours)[0], k)


@EXPANSIONS.register("alpha-qe")
class AlphaQE(ExpansionStage):
    """alpha-QE over the top `top` images, weights max(s, 0)^alpha (Radenović et al.; survey sec. 4)."""

    def __init__(self, *, top: Annotated[int, Range(ge=1)] = 10, alpha: Annotated[float, Range(ge=0)] = 3.0):
        self.top, self.alpha = top, alpha

    def __call__(self, db, query, ranking, k):
        m = min(self.top, len(ranking))
        if m == 0:
            return ranking
        neighbours = np.asarray(db.vectors[ranking.positions[:m]], dtype=np.float32)[None]
        sims = (neighbours[0] @ query.vector)[None]
        return _search_global(db, alpha_query_expansion(query.vector[None], neighbours, sims, self.alpha)[0], k)
