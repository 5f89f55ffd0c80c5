"""Local features: RootSIFT through OpenCV (weight-free), with keypoint positions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import cv2
import numpy as np
from PIL import Image

from ...core.protocols import FeaturesStage
from ...core.registry import FEATURES, Range


@dataclass
class LocalFeatures:
    """One image's local features: keypoints (N, 4) float32 [x, y, size, angle] in pixels, descriptors (N, D) float32;
    optionally their detector strengths `scores` (N,) and the conv `map` (C, h, w) they were read from (deep local
    features), for a regions stage to run on."""
    points: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray | None = None
    map: Any = None

    def __len__(self) -> int:
        return len(self.descriptors)


def rootsift_from_sift(descriptors: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """RootSIFT: L1-normalise each SIFT descriptor, then take the element-wise square root (Arandjelović & Zisserman).

    (N, 128) float -> (N, 128) float32 with unit L2 norm.
    """
    d = np.asarray(descriptors, dtype=np.float32)
    d = d / np.maximum(np.abs(d).sum(axis=1, keepdims=True), eps)
    return np.sqrt(d)


def rootsift(image: Image.Image, max_keypoints: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Detect SIFT keypoints on the grey image and describe them with RootSIFT.

    Returns keypoints (N, 4) float32 [x, y, size, angle] in image pixels and descriptors (N, 128) float32,
    the `max_keypoints` strongest by detector response (0: all of them; N may be 0).
    """
    grey = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    sift = cv2.SIFT_create(nfeatures=max(0, max_keypoints))
    kps, desc = sift.detectAndCompute(grey, None)
    if desc is None or not kps:
        return np.zeros((0, 4), np.float32), np.zeros((0, 128), np.float32)
    if max_keypoints > 0:
        kps, desc = kps[:max_keypoints], desc[:max_keypoints]
    points = np.array([[k.pt[0], k.pt[1], k.size, k.angle] for k in kps], dtype=np.float32)
    return points, rootsift_from_sift(desc)


# the notional stride of the cell grid region proposals are laid on for features without a conv map
REGION_STRIDE = 16


@FEATURES.register("rootsift")
class RootSIFTFeatures(FeaturesStage):
    """RootSIFT local features through OpenCV, the `max_keypoints` strongest (0: all)."""
    kind = "local"

    def __init__(self, *, max_keypoints: Annotated[int, Range(ge=0)] = 2000):
        self.max_keypoints = max_keypoints

    def __call__(self, image: Image.Image) -> LocalFeatures:
        return LocalFeatures(*rootsift(image, self.max_keypoints))

    def region_map(self, image: Image.Image, local: LocalFeatures):
        """What a regions stage runs on for SIFT (which has no conv map): an empty-channel map of one cell per
        REGION_STRIDE pixels, enough for the grid methods (R-MAC grid, sliding windows) that need only its shape
        and for those that look at the image's pixels (selective search)."""
        import torch
        W, H = image.size
        return torch.zeros((0, -(-H // REGION_STRIDE), -(-W // REGION_STRIDE))), REGION_STRIDE
