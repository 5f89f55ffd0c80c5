"""Query expansion: a new query from the query and its top-ranked neighbours."""
from __future__ import annotations

import numpy as np

from .whitening import l2n


def average_query_expansion(query: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Average QE (Chum et al.; Salvador et al. sec. 3.3): L2(q + sum of the top-M descriptors).

    query (Q, D), neighbours (Q, M, D) float32 -> (Q, D) float32, L2-normalised.
    """
    return l2n(query + neighbours.sum(axis=1))


def alpha_query_expansion(query: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, alpha: float = 3.0) -> np.ndarray:
    """alpha-QE (Radenović et al.; survey sec. 4): L2(q + sum_i max(s_i, 0)^alpha x_i) over the top-M.

    query (Q, D), neighbours (Q, M, D), similarities (Q, M) -> (Q, D) float32, L2-normalised.
    alpha = 0 weights every neighbour 1, i.e. average QE.
    """
    w = np.maximum(similarities, 0.0) ** alpha
    return l2n(query + (w[..., None] * neighbours).sum(axis=1))
