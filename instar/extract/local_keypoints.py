"""The `local` section: the strongest RootSIFT keypoints of each image, stored compactly (uint8 descriptors and
positions) for verifying the filter's top candidates (`rerank.method = "local-sp"`)."""
from __future__ import annotations

from typing import Annotated

import numpy as np
from PIL import Image

from ..core.protocols import LocalStage
from ..core.registry import LOCALS, Range
from ..store import Column
from ..store.columns import VERIFY_DESC as DESC
from ..store.columns import VERIFY_XY as XY
from .features.local import rootsift
from .images import resize_longest

SCALE = 255.0  # RootSIFT components lie in [0, 1]


@LOCALS.register("none")
class NoLocal(LocalStage):
    """No local features stored for verification."""


def keypoints(image: Image.Image, max_size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The `n` strongest RootSIFT keypoints of `image` shrunk to `max_size`: positions (N, 2) float32 in `image`'s
    pixels and descriptors (N, 128) float32."""
    small = resize_longest(image, max_size)
    pts, desc = rootsift(small, n)
    if len(pts):
        pts = pts[:, :2] * np.array([image.width / small.width, image.height / small.height], np.float32)
    return pts[:, :2].astype(np.float32), desc


@LOCALS.register("rootsift")
class StoredRootSIFT(LocalStage):
    """The `keypoints` strongest RootSIFT keypoints of the image shrunk to `max_size`, stored compactly (uint8
    descriptors, 136 bytes a keypoint) for the `local-sp` re-ranker."""
    pixel_columns = (XY,)

    def __init__(self, *, keypoints: Annotated[int, Range(ge=1, le=100_000)] = 150,
                 max_size: Annotated[int, Range(ge=32, le=8192)] = 640):
        if keypoints < 1 or max_size < 32:
            raise ValueError("local: keypoints >= 1 and max_size >= 32 are required")
        self.keypoints, self.max_size = keypoints, max_size

    def columns(self) -> list[Column]:
        return [Column(XY, "float32", (2,), ragged=True), Column(DESC, "uint8", (128,), ragged=True)]

    def encode(self, extractor, views, regions_of, description) -> dict[str, np.ndarray]:
        pts, desc = keypoints(description.image, self.max_size, self.keypoints)
        return {XY: pts.reshape(-1, 2), DESC: np.clip(np.rint(desc * SCALE), 0, 255).astype(np.uint8).reshape(-1, 128)}
