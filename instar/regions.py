"""Region stage: boxes on a conv feature map, as (R, 4) int64 [x0, y0, x1, y1) cells.

The functions compute the boxes; the entries of `REGIONS` (a preset's `regions.method`) are the stage objects
the extractor calls as `regions(fmap)` with a (C, h, w) map.
"""
from __future__ import annotations

import math

import numpy as np

from .registry import REGIONS


def _positions(size: int, width: int, count: int) -> list[int]:
    """Start offsets of `count` windows of `width` spread evenly over `size` cells (first at 0, last at the end)."""
    if count <= 1:
        return [max(0, (size - width) // 2)]
    if size <= width:
        return [0]
    step = (size - width) / (count - 1)
    return sorted({int(math.floor(i * step)) for i in range(count)})


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """R-MAC rigid grid (Tolias et al., re-described in the R-MAC paper, sec. 3.1), as (R, 4) int64 boxes.

    Boxes are [x0, y0, x1, y1) in feature-map cells. At level l (1..levels) regions are squares of side
    floor(2*min(H, W)/(l+1)); l regions fit along the short side and l + e along the long side, where e
    (0 for a square map) is chosen so that neighbouring level-1 regions overlap as close to `overlap` as
    possible. Regions are placed uniformly, the first and last touching the map borders.
    """
    if height < 1 or width < 1:
        raise ValueError(f"feature map {height}x{width} is empty")
    short, long_ = min(height, width), max(height, width)
    extra = 0
    if long_ > short:
        # e + 1 windows of side `short` along the long side: step b = (long - short)/e, overlap = 1 - b/short
        extra = min(range(1, 7), key=lambda e: abs((1.0 - (long_ - short) / e / short) - overlap))
    boxes = []
    for level in range(1, levels + 1):
        side = max(1, int(math.floor(2 * short / (level + 1))))
        n_long = level + extra
        n_x = n_long if width > height else level
        n_y = n_long if height > width else level
        for y0 in _positions(height, side, n_y):
            for x0 in _positions(width, side, n_x):
                boxes.append((x0, y0, min(width, x0 + side), min(height, y0 + side)))
    # identical boxes (tiny maps) would be counted twice in the sum; keep each once, in order
    unique = list(dict.fromkeys(boxes))
    return np.asarray(unique, dtype=np.int64).reshape(-1, 4)


def whole_region(height: int, width: int) -> np.ndarray:
    """The single region covering the whole (H, W) map, as a (1, 4) int64 box."""
    return np.array([[0, 0, width, height]], dtype=np.int64)


def box_to_cells(box, image_size: tuple[int, int], map_size: tuple[int, int]) -> np.ndarray:
    """Project a pixel box (x0, y0, x1, y1) on an image of (W, H) onto a feature map of (h, w) cells, (4,) int64."""
    W, H = image_size
    h, w = map_size
    x0, y0, x1, y1 = box
    cx0 = int(np.clip(math.floor(x0 / W * w), 0, w - 1))
    cy0 = int(np.clip(math.floor(y0 / H * h), 0, h - 1))
    cx1 = int(np.clip(math.ceil(x1 / W * w), cx0 + 1, w))
    cy1 = int(np.clip(math.ceil(y1 / H * h), cy0 + 1, h))
    return np.array([cx0, cy0, cx1, cy1], dtype=np.int64)


@REGIONS.register("none")
class WholeMap:
    """No proposals: the single region covering the whole map."""

    def __call__(self, fmap) -> np.ndarray:
        return whole_region(fmap.shape[-2], fmap.shape[-1])


@REGIONS.register("rmac")
class RMACGrid:
    """R-MAC's rigid multi-level grid of square regions (R-MAC paper sec. 3.1)."""

    def __init__(self, *, levels: int = 3, overlap: float = 0.4):
        self.levels, self.overlap = levels, overlap

    def __call__(self, fmap) -> np.ndarray:
        return rmac_regions(fmap.shape[-2], fmap.shape[-1], self.levels, self.overlap)
