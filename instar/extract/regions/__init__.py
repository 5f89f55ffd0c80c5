"""Region stage: where an image's candidate object regions are, on the conv map and in pixels.

Every proposal method is an entry of `REGIONS` (a preset's `regions.method`), in a module of its own under
this package (the grids in `grids.py`); the extractor calls it as ``regions(fmap, geometry, image)`` with one (C, h, w) map, the
`MapGeometry` that ties that map to the image, and the PIL image itself (for methods that look at pixels),
and gets a `Regions`: boxes in cells (for RoI pooling) and in the image's pixels (for localisation). Methods
that propose in pixels (selective search, a learned RPN) map their boxes to cells with `geometry`; grid
methods do the reverse.

Pixel <-> cell mapping (`MapGeometry`): a trunk of stride s lays cell j of its map over pixels
[j*s, (j+1)*s) (clipped to the image). A pixel box [x0, x1) therefore touches cells floor(x0/s) ..
ceil(x1/s) - 1, and a cell box [c0, c1) covers pixels [c0*s, min(c1*s, W)). Where a map's size does not
follow from the stride (an input upsampled to the trunk's minimum size), s is the ratio image size / map size
on that axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class MapGeometry:
    """How a conv map lies on its image: `image_size` (W, H) pixels, `map_size` (w, h) cells, per-axis stride."""
    image_size: tuple[int, int]
    map_size: tuple[int, int]
    stride: tuple[float, float]

    @classmethod
    def of(cls, image_size: tuple[int, int], map_size: tuple[int, int], stride: int) -> "MapGeometry":
        """Geometry of a (w, h) map computed with trunk stride `stride` from a (W, H) image."""
        strides = []
        for size, cells in zip(image_size, map_size):
            exact = cells in (size // stride, -(-size // stride))
            strides.append(float(stride) if exact else size / cells)
        return cls((int(image_size[0]), int(image_size[1])), (int(map_size[0]), int(map_size[1])), (strides[0], strides[1]))

    def cells_to_pixels(self, cells: np.ndarray) -> np.ndarray:
        """(R, 4) [x0, y0, x1, y1) cell boxes -> (R, 4) float32 pixel boxes, clipped to the image."""
        c = np.asarray(cells, dtype=np.float64).reshape(-1, 4)
        sx, sy = self.stride
        W, H = self.image_size
        px = np.stack([c[:, 0] * sx, c[:, 1] * sy, np.minimum(c[:, 2] * sx, W), np.minimum(c[:, 3] * sy, H)], axis=1)
        return px.astype(np.float32)

    def pixels_to_cells(self, pixels: np.ndarray) -> np.ndarray:
        """(R, 4) [x0, y0, x1, y1] pixel boxes -> (R, 4) int64 cell boxes touching them (never empty, inside the map)."""
        p = np.asarray(pixels, dtype=np.float64).reshape(-1, 4)
        sx, sy = self.stride
        w, h = self.map_size
        x0 = np.clip(np.floor(p[:, 0] / sx), 0, w - 1)
        y0 = np.clip(np.floor(p[:, 1] / sy), 0, h - 1)
        x1 = np.clip(np.ceil(p[:, 2] / sx), x0 + 1, w)
        y1 = np.clip(np.ceil(p[:, 3] / sy), y0 + 1, h)
        return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


@dataclass
class Regions:
    """One image's regions: `cells` (R, 4) int64 [x0, y0, x1, y1) on the map, `pixels` (R, 4) float32 in the
    image's pixels, optional `scores` (R,) float32 (objectness, best first, for learned proposals)."""
    cells: np.ndarray
    pixels: np.ndarray
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.cells)

    @classmethod
    def from_cells(cls, cells: np.ndarray, geometry: MapGeometry) -> "Regions":
        cells = np.asarray(cells, dtype=np.int64).reshape(-1, 4)
        return cls(cells, geometry.cells_to_pixels(cells))

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, geometry: MapGeometry, scores: np.ndarray | None = None) -> "Regions":
        pixels = np.asarray(pixels, dtype=np.float32).reshape(-1, 4)
        return cls(geometry.pixels_to_cells(pixels), pixels, scores)


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
