"""Groups of views of the same object in an unlabelled folder, mined as Gordo et al. clean Landmarks (sec. 4).

1. Shortlist: each image's `k` nearest neighbours by the trunk's unwhitened R-MAC descriptor (computed from the
   cached training views, no extra forward); `k = 0` tries every pair. (Gordo et al. match every pair within a
   landmark class; an unlabelled folder has no classes, so a global-descriptor shortlist keeps the number of
   pairs linear in the folder's size, as retrieval-based pair mining does.)
2. Verification: RootSIFT keypoints, mutual ratio-test matches and a RANSAC homography (`instar.matching`); a pair
   with at least `min_inliers` inliers is an edge. (Gordo et al. verify with an affine model; the homography is
   instar's box-estimation model, exact for the flat objects and planar facades this is meant for.)
3. Graph: the connected components of the verified edges are the objects; images left alone (no verified pair)
   are outliers and are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..images import ImageLoadError, load_image, resize_longest
from ..matching import MIN_INLIERS, RATIO, REPROJ_THRESHOLD, image_features, match_keypoints, verify
from ..whitening import l2n
from .rmac_net import CachedView

MATCH_SIZE = 1024      # longest side of the images keypoints are detected on
MAX_KEYPOINTS = 1000   # strongest RootSIFT keypoints per image
SHORTLIST = 20         # neighbours per image whose pairs are verified


def _no_progress(it: Iterable, **_: object) -> Iterable:
    return it


@dataclass
class MinedGroups:
    """`groups` (N,) int: each image's object (0..G-1), -1 for an outlier; `edges` the verified pairs
    (i, j, inliers); `tried` how many pairs were verified."""
    groups: np.ndarray
    edges: list[tuple[int, int, int]]
    tried: int

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


def mine_groups(paths: Sequence[Path], descriptors: np.ndarray, *, k: int = SHORTLIST, min_inliers: int = MIN_INLIERS,
                max_keypoints: int = MAX_KEYPOINTS, match_size: int = MATCH_SIZE, ratio: float = RATIO,
                progress: Callable[..., Iterable] = _no_progress,
                problems: list[tuple[Path, str]] | None = None) -> MinedGroups:
    """Group `paths` (with their global `descriptors` (N, D), L2-normalised, for the shortlist) into objects."""
    if min_inliers < 4:
        raise ValueError(f"min_inliers {min_inliers}: a homography needs at least 4")
    features = []
    for p in progress(paths, desc="RootSIFT keypoints"):
        try:
            features.append(image_features(resize_longest(load_image(p), match_size), max_keypoints))
        except ImageLoadError as e:
            if problems is not None:
                problems.append((Path(p), e.reason))
            features.append(None)
    pairs = shortlist(np.asarray(descriptors, np.float32), k)
    edges = []
    for i, j in progress(pairs, desc="verifying pairs"):
        a, b = features[i], features[j]
        if a is None or b is None:
            continue
        v = verify(a, b, match_keypoints(a, b, ratio), REPROJ_THRESHOLD, min_inliers)
        if v is not None:
            edges.append((i, j, v.inliers))
    return MinedGroups(components(len(paths), edges), edges, len(pairs))
