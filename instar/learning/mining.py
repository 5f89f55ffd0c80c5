"""Groups of views of the same object in an unlabelled folder, mined as Gordo et al. clean Landmarks (sec. 4).

1. Shortlist: each image's `k` nearest neighbours by the trunk's unwhitened R-MAC descriptor (computed from the
   cached training views, no extra forward); `k = 0` tries every pair. (Gordo et al. match every pair within a
   landmark class; an unlabelled folder has no classes, so a global-descriptor shortlist keeps the number of
   pairs linear in the folder's size, as retrieval-based pair mining does.)
2. Verification: RootSIFT keypoints, mutual ratio-test matches and a RANSAC homography (`instar.tools.matching`); a pair
   with at least `min_inliers` inliers is an edge. (Gordo et al. verify with an affine model; the homography is
   instar's box-estimation model, exact for the flat objects and planar facades this is meant for.)
3. Graph: the connected components of the verified edges are the objects; images left alone (no verified pair)
   are outliers and are dropped.

Repeated structure (`max_partners`, off by default): photos taken on the same table, poster or floor verify with
each other through their common background (smvs-dvd-covers' Droid photos of different covers match with up to 340
inliers), and a single such edge merges two objects' components. With `max_partners = K`, a keypoint that is an
inlier with more than K other images is taken for repeated structure (shared background, a logo) rather than the
object, and stops counting: a pair must still have `min_inliers` inliers without such keypoints. K should be at
least the number of views an object has (a view of an object matches its other views through the object's own
keypoints); it is instar's addition, not Gordo et al.'s (who mine within a landmark's noisy class).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.norms import l2n
from ..core.progress import Progress, no_progress
from ..extract.images import ImageLoadError, load_image, resize_longest
from ..tools.matching import MIN_INLIERS, RATIO, REPROJ_THRESHOLD, image_features, match_keypoints, verify
from .rmac_net import CachedView

MATCH_SIZE = 1024      # longest side of the images keypoints are detected on
MAX_KEYPOINTS = 1000   # strongest RootSIFT keypoints per image
SHORTLIST = 20         # neighbours per image whose pairs are verified


@dataclass
class MinedGroups:
    """`groups` (N,) int: each image's object (0..G-1), -1 for an outlier; `edges` the graph's edges (i, j,
    inliers), `verified` every pair that verified (before repeated structure was discounted), `tried` how many
    pairs were tried."""
    groups: np.ndarray
    edges: list[tuple[int, int, int]]
    tried: int
    verified: list[tuple[int, int, int]] | None = None

    @property
    def count(self) -> int:
        return int(self.groups.max()) + 1 if len(self.groups) and self.groups.max() >= 0 else 0

    @property
    def kept(self) -> np.ndarray:
        return np.flatnonzero(self.groups >= 0)


def unwhitened_rmac(view: CachedView) -> np.ndarray:
    """The un-whitened R-MAC of a cached view: per scale the L2 sum of its L2 region MACs, summed, L2. (C,)."""
    total = sum(l2n(r.sum(dim=0)) for r in view.regions)
    return l2n(total).numpy().astype(np.float32)


def shortlist(E: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Pairs (i < j) where j is among i's `k` nearest by cosine or i among j's; every pair when k = 0."""
    n = len(E)
    if k <= 0 or k >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    sims = E @ E.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return sorted({(min(i, int(j)), max(i, int(j))) for i in range(n) for j in nearest[i]})


def components(n: int, edges: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(n,) group ids of the connected components of `edges` with two or more images (numbered by their first
    image), -1 for an image with no edge."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j, _ in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    sizes = np.bincount(roots, minlength=n)
    out = np.full(n, -1, np.int64)
    ids: dict[int, int] = {}
    for i in range(n):
        if sizes[roots[i]] >= 2:
            out[i] = ids.setdefault(int(roots[i]), len(ids))
    return out


def discount_repeated(verified: list[tuple[int, int, np.ndarray]], max_partners: int, min_inliers: int
                      ) -> list[tuple[int, int, int]]:
    """Edges (i, j, inliers) of the `verified` pairs (i, j, (K, 2) inlier keypoint indices in i, in j) that keep
    `min_inliers` inliers once keypoints that are inliers with more than `max_partners` other images are dropped."""
    partners: dict[tuple[int, int], set[int]] = {}
    for i, j, idx in verified:
        for k in idx[:, 0].tolist():
            partners.setdefault((i, k), set()).add(j)
        for k in idx[:, 1].tolist():
            partners.setdefault((j, k), set()).add(i)
    edges = []
    for i, j, idx in verified:
        n = sum(len(partners[(i, a)]) <= max_partners and len(partners[(j, b)]) <= max_partners
                for a, b in idx.tolist())
        if n >= min_inliers:
            edges.append((i, j, n))
    return edges


def mine_groups(paths: Sequence[Path], descriptors: np.ndarray, *, k: int = SHORTLIST, min_inliers: int = MIN_INLIERS,
                max_partners: int = 0, max_keypoints: int = MAX_KEYPOINTS, match_size: int = MATCH_SIZE,
                ratio: float = RATIO, progress: Progress = no_progress,
                problems: list[tuple[Path, str]] | None = None) -> MinedGroups:
    """Group `paths` (with their global `descriptors` (N, D), L2-normalised, for the shortlist) into objects;
    `max_partners` > 0 discounts repeated structure (see the module docstring)."""
    if min_inliers < 4:
        raise ValueError(f"min_inliers {min_inliers}: a homography needs at least 4")
    if max_partners < 0:
        raise ValueError(f"max_partners {max_partners}: 0 (off) or the most images one object keypoint may match")
    features = []
    for p in progress(paths, desc="RootSIFT keypoints"):
        try:
            features.append(image_features(resize_longest(load_image(p), match_size), max_keypoints))
        except ImageLoadError as e:
            if problems is not None:
                problems.append((Path(p), e.reason))
            features.append(None)
    pairs = shortlist(np.asarray(descriptors, np.float32), k)
    verified = []
    for i, j in progress(pairs, desc="verifying pairs"):
        a, b = features[i], features[j]
        if a is None or b is None:
            continue
        v = verify(a, b, match_keypoints(a, b, ratio), REPROJ_THRESHOLD, min_inliers)
        if v is not None:
            verified.append((i, j, v.pairs))
    raw = [(i, j, len(idx)) for i, j, idx in verified]
    edges = discount_repeated(verified, max_partners, min_inliers) if max_partners > 0 else raw
    return MinedGroups(components(len(paths), edges), edges, len(pairs), raw)
