"""Expansions that use the neighbours of the neighbours (survey sec. 5.2.1): diffusion over the shortlist's kNN
graph (Iscen et al., CVPR 2017) and alpha database-side augmentation (alpha-DBA: Radenović et al., TPAMI 2019;
Arandjelović & Zisserman's DBA), both on the top `top` of the (re-ranked) ranking.

Both work on the shortlist only: the neighbourhoods are taken among the top `top` images, so the cost is
O(top^2 x D) per query, nothing is stored, and an index of any size is searched the same way. This is the
shortlist form of both methods; the database-wide forms (a kNN graph of the whole collection, augmented vectors
stored beside the originals) see neighbours outside the shortlist too, at a cost that grows with N^2 at index time.

The functions are the formulas; the entries read the shortlist's stored global vectors and re-score its head.
Scores the re-ranker added on top of the global cosine (a verification bonus) are kept: an entry replaces only
the global part of each score.
"""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...core.norms import l2n
from ...core.protocols import ExpansionStage
from ...core.registry import EXPANSIONS, Range


def knn_affinity(x: np.ndarray, k: int, gamma: float) -> np.ndarray:
    """The symmetric kNN affinity of the rows of x (n, D) float32 (unit norm): a_ij = max(x_i . x_j, 0)^gamma when
    j is among i's k nearest (itself excluded) or i among j's, else 0; (n, n) float64."""
    n = len(x)
    sim = np.maximum(x @ x.T, 0.0).astype(np.float64) ** gamma
    np.fill_diagonal(sim, 0.0)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, n))
    keep = np.zeros((n, n), bool)
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    keep[np.repeat(np.arange(n), k), nearest.ravel()] = True
    return np.where(keep | keep.T, sim, 0.0)


def diffusion_scores(affinity: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Diffusion's closed form (Iscen et al. eq. 5-6; Zhou et al.'s ranking on manifolds): f = (I - alpha S)^-1 y
    with S = D^-1/2 A D^-1/2, A (n, n) a symmetric affinity and y (n,) the initial scores; (n,) float64."""
    degree = affinity.sum(axis=1)
    inv = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    s = inv[:, None] * affinity * inv[None, :]
    return np.linalg.solve(np.eye(len(y)) - alpha * s, y)


def alpha_dba(x: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """alpha-DBA (Radenović et al. sec. 5.2): each row replaced by L2(sum over its n nearest rows, itself
    included, of max(x_i . x_j, 0)^alpha x_j). x (m, D) float32 unit norm -> (m, D) float32."""
    sim = x @ x.T
    n = min(n, len(x))
    nearest = np.argpartition(-sim, n - 1, axis=1)[:, :n]
    w = np.maximum(np.take_along_axis(sim, nearest, 1), 0.0) ** alpha
    return l2n((w[..., None] * x[nearest]).sum(axis=1)).astype(np.float32)


def _shortlist(db, ranking, top: int):
    m = min(top, len(ranking))
    return m, np.asarray(db.vectors[ranking.positions[:m]], np.float32)


@EXPANSIONS.register("diffusion")
class ShortlistDiffusion(ExpansionStage):
    """Diffusion over the top `top`'s kNN graph (k neighbours, affinity cos^gamma, Iscen et al. CVPR 2017) from their scores^gamma; the head re-ordered by the diffused score."""

    def __init__(self, *, top: Annotated[int, Range(ge=2)] = 100, k: Annotated[int, Range(ge=1)] = 10,
                 alpha: Annotated[float, Range(gt=0, lt=1)] = 0.9, gamma: Annotated[float, Range(gt=0)] = 3.0):
        if top < 2 or k < 1 or not 0 < alpha < 1 or gamma <= 0:
            raise ValueError("expansion 'diffusion': top >= 2, k >= 1, 0 < alpha < 1 and gamma > 0 are required")
        self.top, self.k, self.alpha, self.gamma = top, k, alpha, gamma

    def __call__(self, db, query, ranking, k):
        m, x = _shortlist(db, ranking, self.top)
        if m < 2:
            return ranking
        y = np.maximum(ranking.scores[:m].astype(np.float64), 0.0) ** self.gamma
        f = diffusion_scores(knn_affinity(x, self.k, self.gamma), y, self.alpha)
        # the diffused mass, scaled to the best score of the head (its order is what changes; the tail follows)
        return ranking.rescore_head(f / max(f.max(), 1e-12) * float(ranking.scores[0]))


@EXPANSIONS.register("alpha-dba")
class ShortlistAlphaDBA(ExpansionStage):
    """alpha-DBA on the top `top`: each candidate's vector replaced by the weighted sum of its `neighbours` nearest in the shortlist (weights cos^alpha), then re-scored against the query."""

    def __init__(self, *, top: Annotated[int, Range(ge=2)] = 100, neighbours: Annotated[int, Range(ge=1)] = 3,
                 alpha: Annotated[float, Range(ge=0)] = 3.0):
        if top < 2 or neighbours < 1 or alpha < 0:
            raise ValueError("expansion 'alpha-dba': top >= 2, neighbours >= 1 and alpha >= 0 are required")
        self.top, self.neighbours, self.alpha = top, neighbours, alpha

    def __call__(self, db, query, ranking, k):
        m, x = _shortlist(db, ranking, self.top)
        if m < 2:
            return ranking
        q = np.asarray(query.vector, np.float32)
        extra = ranking.scores[:m] - x @ q  # what a re-ranker added to the global cosine (0 without one)
        return ranking.rescore_head(alpha_dba(x, self.neighbours, self.alpha) @ q + extra)
