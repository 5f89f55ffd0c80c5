"""DRH's sliding windows on the conv map (Song et al., Deep Region Hashing, sec. 3.1.2).

Windows take every combination of widths {Wc, Wc/2, Wc/3} and heights {Hc, Hc/2, Hc/3} (Wc x Hc the map in
cells) and slide over the map with overlap `overlap` (the paper's lambda) between neighbours, in both
directions. A window of a fraction 1/k of the side stepped by (1 - lambda) of its own size fits
floor((k - 1) / (1 - lambda)) + 1 times along that side (the paper's counts follow this rule exactly). We
spread that many windows evenly, the first at 0 and the last touching the far border, as R-MAC's grid does, so
the whole map is covered; where the count does not fit exactly, neighbours overlap a little less than lambda
(k = 2, lambda = 0.6: 3 windows, overlap 0.5). Window sizes and starts are rounded to whole cells. The count
does not depend on the map's size, except on tiny maps where windows collapse onto the same cells and
duplicates are dropped.

Aspect filter (the paper: "if W/H <= th we discard the scale Wc/3; when H/W <= th we discard Hc/3"), on the
image's own aspect ratio: a landscape image loses the thinnest height, a portrait one the thinnest width.
The paper gives no value for th; we use 0.8. Any th >= 0.75 reproduces the paper's ~21/36/40/60 windows for
lambda 0.4/0.5/0.6/0.7 on 4:3 photographs (Oxford's, and mini-rparis6k's: `benchmarks/sliding_windows_count.py`),
and 0.8 also filters 3:2 and 4:3 images in either orientation while leaving near-square ones (aspect between
0.8 and 1.25), where a third of the short side is still a reasonable window, with all nine size combinations.

The global region (Wc x Hc) always comes first.
"""
from __future__ import annotations

from typing import Annotated

import math

import numpy as np

from ...core.protocols import RegionsStage
from ...core.registry import REGIONS, Range
from . import MapGeometry, Regions

# floor((k-1)/(1-lambda)) is exact on paper for lambda 0.5 (2/0.5 = 4) but 4.000...1 or 3.999...9 in floats
_EPS = 1e-9


def windows_per_side(fraction_denominator: int, overlap: float) -> int:
    """How many windows of 1/k of a side (k = `fraction_denominator`) fit along it with overlap lambda."""
    k = fraction_denominator
    if k <= 1:
        return 1
    return int(math.floor((k - 1) / (1.0 - overlap) + _EPS)) + 1


def _spans(size: int, overlap: float, divisors: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, end) cell spans along one side of `size` cells for windows of size/k, k in `divisors`."""
    spans: list[tuple[int, int]] = []
    for k in divisors:
        width = max(1, int(round(size / k)))
        n = windows_per_side(k, overlap)
        starts = np.rint(np.linspace(0, size - width, n)).astype(int) if n > 1 else [0]
        spans.extend((int(s), int(s) + width) for s in starts)
    return spans


def sliding_windows(height: int, width: int, overlap: Annotated[float, Range(ge=0, lt=1)] = 0.6, th: Annotated[float, Range(gt=0)] = 0.8,
                    aspect: float | None = None) -> np.ndarray:
    """DRH sliding windows on an (H, W) map as (R, 4) int64 [x0, y0, x1, y1) cell boxes, the whole map first.

    `aspect` is the image's W/H for the filter (default: the map's own width/height).
    """
    if height < 1 or width < 1:
        raise ValueError(f"feature map {height}x{width} is empty")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"sliding windows: overlap {overlap} must be in [0, 1)")
    if not th > 0:
        raise ValueError(f"sliding windows: th {th} must be positive")
    ratio = (width / height) if aspect is None else float(aspect)
    x_div = (1, 2) if ratio <= th else (1, 2, 3)        # portrait: drop Wc/3
    y_div = (1, 2) if 1.0 / ratio <= th else (1, 2, 3)  # landscape: drop Hc/3
    boxes = [(0, 0, width, height)]
    for y0, y1 in _spans(height, overlap, y_div):
        for x0, x1 in _spans(width, overlap, x_div):
            boxes.append((x0, y0, x1, y1))
    unique = list(dict.fromkeys(boxes))  # tiny maps: several windows on the same cells; the whole map stays first
    return np.asarray(unique, dtype=np.int64).reshape(-1, 4)


@REGIONS.register("sliding")
class SlidingWindows(RegionsStage):
    """DRH's sliding windows: widths {W,W/2,W/3} x heights {H,H/2,H/3} slid with overlap, aspect filter th (DRH sec. 3.1.2)."""

    def __init__(self, *, overlap: Annotated[float, Range(ge=0, lt=1)] = 0.6, th: Annotated[float, Range(gt=0)] = 0.8):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"regions.overlap = {overlap}: must be in [0, 1)")
        if not th > 0:
            raise ValueError(f"regions.th = {th}: must be positive")
        self.overlap, self.th = overlap, th

    def __call__(self, fmap, geometry: MapGeometry, image=None) -> Regions:
        W, H = geometry.image_size
        cells = sliding_windows(fmap.shape[-2], fmap.shape[-1], self.overlap, self.th, aspect=W / H)
        return Regions.from_cells(cells, geometry)
