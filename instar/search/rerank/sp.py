"""Spatial verification (SP) of the head of a ranking: RANSAC with an affine model over tentative correspondences
(Philbin et al.'s fast spatial matching; Detect-to-Retrieve sec. 5.2.3 re-ranks the top 100 this way).

Tentative correspondences between the query's local features and a database image's: pairs of features quantised
to the same visual word whose residuals' signs agree on at least a share of their bits (Hamming embedding:
similarity 1 - 2h/D >= `min_similarity`, h the Hamming distance of the D-bit signs), kept where each is the
other's best such match (mutual nearest neighbours within the word). OpenCV's RANSAC (`cv2.estimateAffine2D`, or
`cv2.estimateAffinePartial2D` for a similarity) fits query -> database positions; an image's new score is its
inlier count (when at least `min_inliers`, else 0) plus its filter score (< 1 for the normalised kernels), so
verified images rise above the unverified ones, which keep the filter's order. The bounding box of the inliers in
the database image (original pixels) is the hit's localisation.

The index must store each image's local features' words, positions and residual signs (`pooling.points = true`
of the `asmk` pooling: columns local_words, local_xy, local_codes).
"""
from __future__ import annotations

from typing import Annotated

import cv2
import numpy as np

from ...core.binary import binary_similarity, pack_signs
from ...core.groups import concat_ranges
from ...core.protocols import RerankStage
from ...core.registry import RERANKERS, Range
from ...store.columns import LOCAL_CODES, LOCAL_WORDS, LOCAL_XY
from ..filter.asmk import asmk_stage
from ..types import Database, Query, Ranking

MODELS = ("affine", "similarity")


def tentative_matches(q_words: np.ndarray, q_codes: np.ndarray, d_words: np.ndarray, d_codes: np.ndarray,
                      dim: int, min_similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """Mutual best pairs (query index, database index) among same-word pairs whose sign similarity reaches
    `min_similarity`."""
    q_order = np.argsort(q_words, kind="stable")
    qs = q_words[q_order]
    lo = np.searchsorted(qs, d_words, "left")
    hi = np.searchsorted(qs, d_words, "right")
    counts = hi - lo
    if counts.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    qi = q_order[concat_ranges(lo, counts)]
    di = np.repeat(np.arange(len(d_words)), counts)
    u = binary_similarity(q_codes[qi], d_codes[di], dim)
    keep = u >= min_similarity
    qi, di, u = qi[keep], di[keep], u[keep]
    if len(qi) == 0:
        return qi, di
    # best database feature of each query feature, and best query feature of each database feature
    by_q = np.lexsort((-u, qi))
    best_q = by_q[np.concatenate([[True], qi[by_q][1:] != qi[by_q][:-1]])]
    by_d = np.lexsort((-u, di))
    best_d = by_d[np.concatenate([[True], di[by_d][1:] != di[by_d][:-1]])]
    mutual = np.intersect1d(best_q, best_d)
    return qi[mutual], di[mutual]


def verify(src: np.ndarray, dst: np.ndarray, *, model: str = "affine", threshold: Annotated[float, Range(gt=0)] = 20.0,
           max_iters: Annotated[int, Range(ge=1)] = 2000, min_inliers: Annotated[int, Range(ge=3)] = 5) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """RANSAC fit of src (n, 2) -> dst (n, 2): (inlier count, 2x3 model, inlier mask) -- (0, None, None) when fewer
    than `min_inliers` correspondences or inliers."""
    if model not in MODELS:
        raise ValueError(f"rerank.model = {model!r}: expected one of {', '.join(MODELS)}")
    if len(src) < max(min_inliers, 3):
        return 0, None, None
    fit = cv2.estimateAffine2D if model == "affine" else cv2.estimateAffinePartial2D
    A, mask = fit(np.ascontiguousarray(src, np.float32).reshape(-1, 1, 2),
                  np.ascontiguousarray(dst, np.float32).reshape(-1, 1, 2),
                  method=cv2.RANSAC, ransacReprojThreshold=float(threshold), maxIters=int(max_iters),
                  confidence=0.999, refineIters=10)
    if A is None or mask is None:
        return 0, None, None
    inl = mask.ravel().astype(bool)
    n = int(inl.sum())
    if n < min_inliers:
        return 0, None, None
    return n, A, inl


@RERANKERS.register("sp", choices={"model": MODELS})
class SpatialVerification(RerankStage):
    """Spatial verification of the top N: RANSAC affine (OpenCV) over same-word, sign-consistent mutual matches; re-ranked by inliers, localised by the inliers' box."""

    def __init__(self, *, top: Annotated[int, Range(ge=1)] = 100, model: str = "affine", threshold: Annotated[float, Range(gt=0)] = 20.0, min_inliers: Annotated[int, Range(ge=3)] = 5,
                 min_similarity: Annotated[float, Range(ge=-1, le=1)] = 0.25, max_iters: Annotated[int, Range(ge=1)] = 2000):
        if model not in MODELS:
            raise ValueError(f"rerank.model = {model!r}: expected one of {', '.join(MODELS)}")
        if top < 1 or min_inliers < 3 or threshold <= 0 or max_iters < 1:
            raise ValueError("rerank: top >= 1, min_inliers >= 3, threshold > 0 and max_iters >= 1 are required")
        self.top, self.model, self.threshold, self.min_inliers = top, model, threshold, min_inliers
        self.min_similarity, self.max_iters = min_similarity, max_iters

    @staticmethod
    def requires(sections) -> str | None:
        pooling = sections["pooling"]
        if pooling["method"] != "asmk" or not pooling.get("points", False):
            return ("rerank.method 'sp' verifies local features' positions: set pooling.method = 'asmk' and "
                    "pooling.points = true so that the index stores them")
        return None

    def _query(self, query: Query):
        stage = asmk_stage(query, "rerank.method = 'sp'")

        def compute():
            local = query.features
            words = stage.words_of(local)
            return words, pack_signs(local.descriptors - stage.codebook.centroids[words]), local.points[:, :2]
        return stage, query.memo(("sp", id(stage)), compute)

    def inliers(self, db: Database, query: Query, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inlier counts (n,) int64 and inlier boxes (n, 4) float32 (original pixels; NaN where unverified)."""
        stage, (q_words, q_codes, q_xy) = self._query(query)
        snap = db.snapshot
        if snap is None or LOCAL_WORDS not in snap.columns:
            raise ValueError("rerank.method = 'sp' needs the index's local feature positions (pooling.points = true)")
        rows = db.rows[np.asarray(positions, np.int64)]
        starts, counts = snap.spans(LOCAL_WORDS, rows)
        words_col, xy_col, codes_col = snap.column(LOCAL_WORDS), snap.column(LOCAL_XY), snap.column(LOCAL_CODES)
        dim = stage.codebook.centroids.shape[1]
        out = np.zeros(len(rows), np.int64)
        boxes = np.full((len(rows), 4), np.nan, np.float32)
        for i, (s, c) in enumerate(zip(starts.tolist(), counts.tolist())):
            out[i], boxes[i] = self.verify_pair((q_words, q_codes, q_xy), (np.asarray(words_col[s:s + c]),
                                                np.asarray(codes_col[s:s + c]), np.asarray(xy_col[s:s + c])), dim)
        return out, boxes

    def verify_pair(self, q, d, dim: int) -> tuple[int, np.ndarray]:
        """One query -- database pair, each (words (N,), residual signs (N, D/8), positions (N, 2)): the inlier
        count and the inliers' box in the database image ((4,), NaN when unverified)."""
        box = np.full(4, np.nan, np.float32)
        if len(q[0]) == 0 or len(d[0]) == 0:
            return 0, box
        qi, di = tentative_matches(q[0], q[1], d[0], d[1], dim, self.min_similarity)
        dst = d[2][di]
        n, _, inl = verify(q[2][qi], dst, model=self.model, threshold=self.threshold, max_iters=self.max_iters,
                           min_inliers=self.min_inliers)
        if n:
            p = dst[inl]
            box[:] = [p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]
        return n, box

    def __call__(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        n = min(self.top, len(ranking))
        inliers, boxes = self.inliers(db, query, ranking.positions[:n])
        return ranking.rescore_head(inliers + ranking.scores[:n], boxes)

    def localise(self, db: Database, query: Query, positions: np.ndarray) -> np.ndarray:
        """The inliers' bounding box in each image (NaN where it is not verified)."""
        return self.inliers(db, query, positions)[1]
