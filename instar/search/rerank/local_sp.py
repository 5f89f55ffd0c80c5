"""Compact local verification: a few hundred RootSIFT keypoints stored per image beside any global vector, and a
re-ranker that verifies the filter's top candidates with them (RANSAC) and adds the verified evidence to the
global score.

Extraction side: the `local` section (its own registry, in pipeline order after `coding`).

    [local]
    method = "rootsift"
    keypoints = 600          # the strongest by detector response, of the image shrunk to `max_size`
    max_size = 640
    encoding = "p64q4"       # u8: 128 B a descriptor; p64: orientation pairs merged, 64 B; p64q4: 4 bits, 32 B

stores per image `verify_xy` (N, 2) float32 (pixels; the index scales them to the original image) and
`verify_desc` (N, B) uint8 (`instar.extract.local_keypoints.encode_descriptors`): 40 bytes a keypoint with p64q4.

Search side: `rerank.method = "local-sp"`. The query's keypoints are not stored, so it gets more of them
(`query_keypoints`, same image size), encoded as the index's are. For each of the `top` candidates: every stored
keypoint's two nearest query descriptors (L2), kept when the nearest passes Lowe's `ratio` test and is mutual
(`matches_of_many`: all candidates in a few matrix products); `cv2.estimateAffine2D` (RANSAC, `threshold` pixels
of the described images) counts the inliers. The candidate's new score is

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
from ...extract.local_keypoints import decode_descriptors, keypoints, stored_levels
from ...store.columns import VERIFY_DESC as DESC
from ...store.columns import VERIFY_XY as XY
from ..types import Database, Query, Ranking


def matches_of_many(d: np.ndarray, counts: np.ndarray, q: np.ndarray, ratio: float,
                    block: int = 2048) -> list[tuple[np.ndarray, np.ndarray]]:
    """Mutual ratio-test matches of several candidates at once. `d` (M, D) float32: the candidates' descriptors one
    after the other, `counts` (n,) how many each has; `q` (N, D) float32 the query's. Per candidate, its (database
    index within the candidate, query index) pairs: a database descriptor's nearest query descriptor, kept when it
    is closer than `ratio` x the second nearest and no descriptor of the same candidate is closer to that query
    descriptor. The two nearest query descriptors of every database descriptor come from matrix products over
    blocks of `block` database descriptors (each block's (block, N) scores stay in cache while its nearest and
    second nearest are read); the mutual check compares only the query descriptors that passed the ratio test with
    their candidate's descriptors. A tie for the nearest fails the
    ratio test, so which of two equally near descriptors is reported never matters; with integer-valued
    descriptors (the stored encodings) every distance is exact in float32."""
    counts = np.asarray(counts, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(q) < 2 or starts[-1] == 0:
        return [empty] * len(counts)
    q = np.ascontiguousarray(q, np.float32)
    d = np.asarray(d, np.float32)
    q2t = np.ascontiguousarray(2.0 * q.T)
    q_sq = (q * q).sum(1)
    first = np.empty(len(d), np.float32)
    second = np.empty(len(d), np.float32)
    nearest = np.empty(len(d), np.int64)
    for lo in range(0, len(d), block):  # blocks small enough to stay in cache across the passes below
        part = d[lo:lo + block]
        score = part @ q2t  # 2 d.q; the squared distance is |d|^2 + |q|^2 - 2 d.q
        score -= q_sq
        rows = np.arange(len(part))
        best = score.argmax(axis=1)
        top = score[rows, best]
        score[rows, best] = -np.inf
        d_sq = (part * part).sum(1)
        first[lo:lo + block], second[lo:lo + block] = d_sq - top, d_sq - score.max(axis=1)
        nearest[lo:lo + block] = best
    ok = np.maximum(first, 0) < (ratio ** 2) * np.maximum(second, 0)
    out = []
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
        rows = np.nonzero(ok[a:b])[0]
        if not len(rows):
            out.append(empty)
            continue
        qi = nearest[a:b][rows]
        cand = d[a:b]
        sub = q[qi]
        # distances of each tentatively matched query descriptor to every descriptor of this candidate (m, b - a)
        dist = (sub * sub).sum(1)[:, None] + (cand * cand).sum(1)[None, :] - 2.0 * (sub @ cand.T)
        mutual = dist[np.arange(len(rows)), rows] <= dist.min(axis=1)
        out.append((rows[mutual], qi[mutual]))
    return out


def mutual_ratio_matches(d: np.ndarray, q: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(database index, query index) pairs of one candidate: `matches_of_many` with one candidate. d (M, D), q (N, D)
    float32."""
    if len(d) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return matches_of_many(d, np.array([len(d)]), q, ratio)[0]


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
            # the stored keypoints went through the encoding's rounding: so do the query's
            return pts, stored_levels(desc, stage.encoding)
        return query.memo(("local-sp", stage.max_size, self.query_keypoints, stage.encoding), compute)

    def inliers(self, db: Database, query: Query, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inlier counts (n,) int64 and the inliers' boxes (n, 4) float32 in original pixels (NaN: unverified)."""
        snap = db.snapshot
        if snap is None or XY not in snap.columns:
            raise ValueError("rerank.method = 'local-sp' needs the index's stored keypoints (local.method = 'rootsift')")
        q_xy, q_desc = self._query(query)
        starts, counts = db.cached(("local-sp", "spans"), lambda: snap.spans(XY, db.rows))
        xy_col, desc_col = snap.column(XY), snap.column(DESC)
        # query keypoints are in the prepared query's pixels, stored ones in their original image's; RANSAC's
        # threshold is in the query's pixels (an affine model absorbs the scale between the two)
        encoding = query.extractor.local.encoding
        spans = [(int(starts[p]), int(counts[p])) for p in np.asarray(positions, np.int64).tolist()]
        return self.verify_many([(np.asarray(xy_col[s:s + c], np.float32),
                                  decode_descriptors(desc_col[s:s + c], encoding)) for s, c in spans], q_xy, q_desc)

    def verify_many(self, candidates: list[tuple[np.ndarray, np.ndarray]], q_xy: np.ndarray, q_desc: np.ndarray):
        """Candidates' keypoints (positions (M_i, 2), decoded descriptors (M_i, D) float32) against the query's, all
        matched at once (`matches_of_many`), then RANSAC each: inlier counts (n,) int64 and boxes (n, 4) float32."""
        out = np.zeros(len(candidates), np.int64)
        boxes = np.full((len(candidates), 4), np.nan, np.float32)
        if not candidates:
            return out, boxes
        matches = matches_of_many(np.concatenate([d for _, d in candidates]),
                                  np.array([len(d) for _, d in candidates], np.int64), q_desc, self.ratio)
        for i, ((d_xy, _), (di, qi)) in enumerate(zip(candidates, matches)):
            out[i], boxes[i] = self.ransac(d_xy, q_xy, di, qi)
        return out, boxes

    def verify_pair(self, d_xy: np.ndarray, d_desc: np.ndarray, q_xy: np.ndarray, q_desc: np.ndarray):
        """One candidate's stored keypoints (positions (M, 2), decoded descriptors (M, D) float32) against the
        query's: (inlier count, the inliers' box (4,) in the candidate's pixels, NaN when unverified)."""
        if len(d_xy) < self.min_inliers or len(q_xy) < self.min_inliers:
            return 0, np.full(4, np.nan, np.float32)
        di, qi = mutual_ratio_matches(d_desc, q_desc, self.ratio)
        return self.ransac(d_xy, q_xy, di, qi)

    def ransac(self, d_xy: np.ndarray, q_xy: np.ndarray, di: np.ndarray, qi: np.ndarray):
        """RANSAC affine over the matches (di, qi): (inlier count, the inliers' box (4,) in the candidate's pixels,
        NaN when fewer than `min_inliers` agree)."""
        box = np.full(4, np.nan, np.float32)
        if len(di) < self.min_inliers or len(q_xy) < self.min_inliers:
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
