"""Compact local verification: a few hundred RootSIFT keypoints stored per image beside any global vector, and a
re-ranker that verifies the filter's top candidates with them (RANSAC) and adds the verified evidence to the
global score.

Extraction side: the `local` section (its own registry, in pipeline order after `coding`).

    [local]
    method = "rootsift"
    keypoints = 150          # the strongest by detector response, of the image shrunk to `max_size`
    max_size = 640

stores per image `verify_xy` (N, 2) float32 (pixels; the index scales them to the original image) and
`verify_desc` (N, 128) uint8 (RootSIFT x 255, rounded): 136 bytes a keypoint, 20.4 KB for 150.

Search side: `rerank.method = "local-sp"`. The query's keypoints are not stored, so it gets more of them
(`query_keypoints`, same image size). For each of the `top` candidates: every stored keypoint's two nearest query
descriptors (L2), kept when the nearest passes Lowe's `ratio` test and is mutual; `cv2.estimateAffine2D` (RANSAC,
`threshold` pixels of the described images) counts the inliers. The candidate's new score is

    global score + weight * min(inliers / saturate, 1)    when inliers >= min_inliers, else the global score,

so an image the global vector ranks well keeps its place where the local evidence is weak (3-D landmarks, where
affine verification of a few keypoints fails often) and a planar object seen in clutter (a cover, a painting)
rises when its keypoints agree. The inliers' box in the candidate (original pixels) is its localisation.
"""
from __future__ import annotations

from typing import Annotated

import cv2
import numpy as np

from ...core.protocols import RerankStage
from ...core.registry import RERANKERS, Range
from ...extract.local_keypoints import SCALE, keypoints
from ...store.columns import VERIFY_DESC as DESC
from ...store.columns import VERIFY_XY as XY
from ..types import Database, Query, Ranking


def mutual_ratio_matches(d: np.ndarray, q: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(database index, query index) pairs: each database descriptor's nearest query descriptor, kept when it is
    closer than `ratio` x the second nearest and the database descriptor is that query descriptor's nearest too.
    d (M, D), q (N, D) float32."""
    if len(d) == 0 or len(q) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dist = (d * d).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (d @ q.T)  # squared L2 (M, N)
    two = np.argpartition(dist, 1, axis=1)[:, :2]
    d2 = np.take_along_axis(dist, two, 1)
    swap = d2[:, 1] < d2[:, 0]
    nearest = np.where(swap, two[:, 1], two[:, 0])
    first, second = np.minimum(d2[:, 0], d2[:, 1]), np.maximum(d2[:, 0], d2[:, 1])
    ok = np.maximum(first, 0) < (ratio ** 2) * np.maximum(second, 0)
    back = dist.argmin(axis=0)  # each query descriptor's nearest database descriptor
    ok &= back[nearest] == np.arange(len(d))
    di = np.nonzero(ok)[0]
    return di, nearest[di]


@RERANKERS.register("local-sp")
class LocalVerification(RerankStage):
    """Verify the top N with the stored RootSIFT keypoints (mutual ratio-test matches, RANSAC affine); add weight x min(inliers / saturate, 1) to the global score of those with >= min_inliers."""

    def __init__(self, *, top: Annotated[int, Range(ge=1)] = 30,
                 query_keypoints: Annotated[int, Range(ge=1, le=100_000)] = 1000,
                 ratio: Annotated[float, Range(gt=0, le=1)] = 0.85, threshold: Annotated[float, Range(gt=0)] = 8.0,
                 min_inliers: Annotated[int, Range(ge=3)] = 8, saturate: Annotated[int, Range(ge=1)] = 30,
                 weight: Annotated[float, Range(ge=0)] = 1.0):
        if top < 1 or min_inliers < 3 or threshold <= 0 or saturate < 1 or not 0 < ratio <= 1:
            raise ValueError("rerank: top >= 1, min_inliers >= 3, threshold > 0, saturate >= 1, 0 < ratio <= 1")
        self.top, self.query_keypoints, self.ratio, self.threshold = top, query_keypoints, ratio, threshold
        self.min_inliers, self.saturate, self.weight = min_inliers, saturate, weight

    @staticmethod
    def requires(sections) -> str | None:
        if sections.get("local", {}).get("method", "none") == "none":
            return ("rerank.method 'local-sp' verifies stored keypoints: set local.method = 'rootsift' so that the "
                    "index stores them")
        return None

    def _query(self, query: Query):
        stage = query.extractor.local

        def compute():
            image = query.prepared
            pts, desc = keypoints(image, stage.max_size, self.query_keypoints)
            # the stored keypoints went through the uint8 rounding: so do the query's
            return pts, np.rint(desc * SCALE).astype(np.float32)
        return query.memo(("local-sp", stage.max_size, self.query_keypoints), compute)

    def inliers(self, db: Database, query: Query, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inlier counts (n,) int64 and the inliers' boxes (n, 4) float32 in original pixels (NaN: unverified)."""
        snap = db.snapshot
        if snap is None or XY not in snap.columns:
            raise ValueError("rerank.method = 'local-sp' needs the index's stored keypoints (local.method = 'rootsift')")
        q_xy, q_desc = self._query(query)
        starts, counts = db.cached(("local-sp", "spans"), lambda: snap.spans(XY, db.rows))
        xy_col, desc_col = snap.column(XY), snap.column(DESC)
        positions = np.asarray(positions, np.int64)
        out = np.zeros(len(positions), np.int64)
        boxes = np.full((len(positions), 4), np.nan, np.float32)
        # query keypoints are in the prepared query's pixels, stored ones in their original image's; RANSAC's
        # threshold is in the query's pixels (an affine model absorbs the scale between the two)
        for i, p in enumerate(positions.tolist()):
            s, c = int(starts[p]), int(counts[p])
            out[i], boxes[i] = self.verify_pair(np.asarray(xy_col[s:s + c], np.float32),
                                                np.asarray(desc_col[s:s + c], np.float32), q_xy, q_desc)
        return out, boxes

    def verify_pair(self, d_xy: np.ndarray, d_desc: np.ndarray, q_xy: np.ndarray, q_desc: np.ndarray):
        """One candidate's stored keypoints (positions (M, 2), uint8-scaled descriptors (M, 128) float32) against
        the query's: (inlier count, the inliers' box (4,) in the candidate's pixels, NaN when unverified)."""
        box = np.full(4, np.nan, np.float32)
        if len(d_xy) < self.min_inliers or len(q_xy) < self.min_inliers:
            return 0, box
        di, qi = mutual_ratio_matches(d_desc, q_desc, self.ratio)
        if len(di) < self.min_inliers:
            return 0, box
        model, mask = cv2.estimateAffine2D(d_xy[di], q_xy[qi], method=cv2.RANSAC,
                                           ransacReprojThreshold=self.threshold, maxIters=2000, confidence=0.99)
        if model is None or mask is None:
            return 0, box
        inl = mask.ravel().astype(bool)
        n = int(inl.sum())
        if n < self.min_inliers:
            return 0, box
        pts = d_xy[di][inl]
        box[:] = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
        return n, box

    def bonus(self, inliers: np.ndarray) -> np.ndarray:
        return np.where(inliers >= self.min_inliers,
                        self.weight * np.minimum(inliers / float(self.saturate), 1.0), 0.0)

    def __call__(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        n = min(self.top, len(ranking))
        inliers, boxes = self.inliers(db, query, ranking.positions[:n])
        scores = ranking.scores[:n] + self.bonus(inliers)
        order = np.argsort(-scores, kind="stable")
        tail = len(ranking) - n
        all_boxes = np.concatenate([boxes[order], np.full((tail, 4), np.nan, np.float32)])
        return Ranking(np.concatenate([ranking.positions[:n][order], ranking.positions[n:]]),
                       np.concatenate([scores[order], ranking.scores[n:]]).astype(np.float32), all_boxes)

    def localise(self, db: Database, query: Query, positions: np.ndarray) -> np.ndarray:
        return self.inliers(db, query, positions)[1]
