"""Selective search proposals (Uijlings et al., IJCV 2013) through OpenCV contrib's
`cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`: super-pixels greedily merged by low-level cues
(DRH sec. 2, "Object proposals"; Detect-to-Retrieve sec. 4.2 compares it as "SS"), the unsupervised baseline
of the proposal recall table.

Selective search looks at pixels, not at the conv map: it runs on a copy of the image shrunk so its longest
side is `max_side` pixels (default 256; 0 keeps the image's size). On a 640x480 photo on this project's CPU that
takes ~0.15 s in `fast` mode (~290 boxes) against ~0.5 s in `quality` mode (~900 boxes); at 320 px fast mode
takes ~0.2 s. The object boxes instar proposes are rarely smaller than a few cells of a stride-32 map, which a
256-px copy still resolves (one cell of a 1024-px image is 8 of its pixels). Boxes are scaled back to the
image's pixels, the first `top` in OpenCV's order are kept, and the whole image always comes first.
"""
from __future__ import annotations

from typing import Annotated

import cv2
import numpy as np

from ...core.protocols import RegionsStage
from ...core.registry import REGIONS, Range
from . import MapGeometry, Regions

MODES = ("fast", "quality")


def selective_search(image, top: Annotated[int, Range(ge=1)] = 300, mode: str = "fast", max_side: Annotated[int, Range(ge=0)] = 256) -> np.ndarray:
    """(R, 4) float32 [x0, y0, x1, y1] pixel boxes on a PIL `image`, at most `top`, in OpenCV's order."""
    if mode not in MODES:
        raise ValueError(f"selective search: mode {mode!r} is not one of {', '.join(MODES)}")
    if top < 1:
        raise ValueError(f"selective search: top {top} must be at least 1")
    if max_side < 0:
        raise ValueError(f"selective search: max_side {max_side} must be 0 (no shrinking) or a size in pixels")
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    H, W = bgr.shape[:2]
    scale = 1.0
    if max_side and max(W, H) > max_side:
        scale = max_side / max(W, H)
        bgr = cv2.resize(bgr, (max(1, round(W * scale)), max(1, round(H * scale))), interpolation=cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)[:top]  # (x, y, w, h) on the small copy
    sx, sy = W / bgr.shape[1], H / bgr.shape[0]
    boxes = np.stack([rects[:, 0] * sx, rects[:, 1] * sy, (rects[:, 0] + rects[:, 2]) * sx,
                      (rects[:, 1] + rects[:, 3]) * sy], axis=1)
    boxes = np.clip(boxes, 0, [W, H, W, H])
    return boxes.astype(np.float32)


@REGIONS.register("selective-search")
class SelectiveSearch(RegionsStage):
    """Selective search (Uijlings et al.; DRH sec. 2) via OpenCV ximgproc: the whole image, then the top boxes found on a max_side-px copy."""

    def __init__(self, *, top: Annotated[int, Range(ge=1)] = 300, mode: str = "fast", max_side: Annotated[int, Range(ge=0)] = 256):
        if mode not in MODES:
            raise ValueError(f"regions.mode = {mode!r}: expected one of {', '.join(MODES)}")
        if top < 1:
            raise ValueError(f"regions.top = {top}: must be at least 1")
        if max_side < 0:
            raise ValueError(f"regions.max_side = {max_side}: must be 0 (no shrinking) or a size in pixels")
        self.top, self.mode, self.max_side = top, mode, max_side

    def __call__(self, fmap, geometry: MapGeometry, image=None) -> Regions:
        if image is None:
            raise ValueError("selective search proposes boxes from the image's pixels: call it with the image")
        W, H = geometry.image_size
        boxes = selective_search(image, self.top, self.mode, self.max_side)
        if image.size != (W, H):  # a map of another scale of the image: its geometry counts that scale's pixels
            boxes = boxes * np.array([W / image.width, H / image.height] * 2, dtype=np.float32)
        whole = np.array([[0, 0, W, H]], dtype=np.float32)
        boxes = boxes[~np.all(boxes == whole, axis=1)]
        return Regions.from_pixels(np.concatenate([whole, boxes]), geometry)
