"""Grouped and ranked arrays: runs of items per image (regions, entries), their max / mean per image, top-k."""
from __future__ import annotations

import numpy as np


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c): (sum c,) int64."""
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    if n == 0:
        return np.zeros(0, np.int64)
    return np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(np.asarray(starts, np.int64), counts)


def group_reduce(values: np.ndarray, counts: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
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


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest `scores`, best first; equal scores keep their order (stable)."""
    k = min(int(k), len(scores))
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.argsort(-scores[part], kind="stable")]
    return np.argsort(-scores, kind="stable")


def reduce_items(scores: np.ndarray, pos: np.ndarray, n: int, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (n,) float32 from item scores, `pos` (I,) the image of each item (-1: none): `single` (one item
    per image), `max` (eq. 3; also the best item of each image, else -1) or `mean` over the image's items (eq. 4)."""
    ok = np.flatnonzero(pos >= 0)
    best = np.full(n, -1, np.int64)
    if how == "single":
        image = np.zeros(n, np.float32)
        image[pos[ok]] = scores[ok]
        best[pos[ok]] = ok
        return image, best
    if how == "mean":
        image = (np.bincount(pos[ok], weights=scores[ok], minlength=n)
                 / np.maximum(np.bincount(pos[ok], minlength=n), 1)).astype(np.float32)
        return image, best
    if how != "max":
        raise ValueError(f"regional pooling {how!r}: expected max or mean")
    by = np.lexsort((-scores[ok], pos[ok]))
    items = ok[by]
    first = items[np.concatenate([[True], pos[items][1:] != pos[items][:-1]])] if len(items) else items
    image = np.zeros(n, np.float32)
    image[pos[first]] = scores[first]
    best[pos[first]] = first
    return image, best
