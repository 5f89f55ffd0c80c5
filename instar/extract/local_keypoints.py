"""The `local` section: the strongest RootSIFT keypoints of each image, stored compactly (positions and quantised
descriptors) for verifying the filter's top candidates (`rerank.method = "local-sp"`)."""
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
PAIR_CAP = 0.4  # largest pair-merged component kept by 4 bits (the 99.9th percentile is ~0.33)

# stored bytes per keypoint's descriptor, by encoding
ENCODINGS = {"u8": 128, "p64": 64, "p64q4": 32}


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


def merge_orientation_pairs(desc: np.ndarray) -> np.ndarray:
    """RootSIFT (N, 128) -> (N, 64): each cell's 8 orientation bins merged in adjacent pairs, sqrt(a^2 + b^2), so
    the unit L2 norm is kept (SIFT's layout: 4 x 4 cells x 8 bins, bins last)."""
    d = np.asarray(desc, np.float32)
    return np.sqrt(d[:, 0::2] ** 2 + d[:, 1::2] ** 2)


def encode_descriptors(desc: np.ndarray, encoding: str) -> np.ndarray:
    """RootSIFT (N, 128) float32 -> stored bytes (N, ENCODINGS[encoding]) uint8: `u8` each component x 255;
    `p64` orientation pairs merged, x 255; `p64q4` pairs merged, 4 bits each (0..15 over [0, PAIR_CAP]), two a
    byte (high nibble first)."""
    desc = np.asarray(desc, np.float32).reshape(-1, 128)
    if encoding == "u8":
        return np.clip(np.rint(desc * SCALE), 0, 255).astype(np.uint8)
    pairs = merge_orientation_pairs(desc)
    if encoding == "p64":
        return np.clip(np.rint(pairs * SCALE), 0, 255).astype(np.uint8)
    if encoding == "p64q4":
        q = np.clip(np.rint(pairs * (15.0 / PAIR_CAP)), 0, 15).astype(np.uint8)
        return (q[:, 0::2] << 4) | q[:, 1::2]
    raise ValueError(f"local.encoding must be one of {sorted(ENCODINGS)}, not {encoding!r}")


def decode_descriptors(stored: np.ndarray, encoding: str) -> np.ndarray:
    """Stored bytes (N, ENCODINGS[encoding]) uint8 -> the integer levels as float32 (N, 128 or 64) -- matching
    compares these (ratio tests and nearest neighbours do not depend on a common scale; the distances between
    integer vectors of this size are exact in float32)."""
    stored = np.asarray(stored, np.uint8)
    if encoding == "p64q4":
        out = np.empty((len(stored), 2 * stored.shape[1]), np.float32)
        out[:, 0::2], out[:, 1::2] = stored >> 4, stored & 15
        return out
    return stored.astype(np.float32)


def stored_levels(desc: np.ndarray, encoding: str) -> np.ndarray:
    """RootSIFT (N, 128) float32 -> what matching compares after a round trip through `encoding`'s storage: the
    query's descriptors go through it so that they meet the stored ones on the same levels."""
    return decode_descriptors(encode_descriptors(desc, encoding), encoding)


@LOCALS.register("rootsift", choices={"encoding": tuple(ENCODINGS)})
class StoredRootSIFT(LocalStage):
    """The `keypoints` strongest RootSIFT keypoints of the image shrunk to `max_size`, stored compactly for the
    `local-sp` re-ranker: positions float32 (8 bytes) and the descriptor in `encoding` (`u8`: 128 bytes, `p64`:
    orientation pairs merged, 64 bytes, `p64q4`: merged pairs in 4 bits, 32 bytes)."""
    pixel_columns = (XY,)

    def __init__(self, *, keypoints: Annotated[int, Range(ge=1, le=100_000)] = 150,
                 max_size: Annotated[int, Range(ge=32, le=8192)] = 640,
                 encoding: str = "u8"):
        if keypoints < 1 or max_size < 32:
            raise ValueError("local: keypoints >= 1 and max_size >= 32 are required")
        if encoding not in ENCODINGS:
            raise ValueError(f"local.encoding must be one of {sorted(ENCODINGS)}, not {encoding!r}")
        self.keypoints, self.max_size, self.encoding = keypoints, max_size, encoding

    def columns(self) -> list[Column]:
        return [Column(XY, "float32", (2,), ragged=True),
                Column(DESC, "uint8", (ENCODINGS[self.encoding],), ragged=True)]

    def encode(self, extractor, views, regions_of, description) -> dict[str, np.ndarray]:
        pts, desc = keypoints(description.image, self.max_size, self.keypoints)
        return {XY: pts.reshape(-1, 2), DESC: encode_descriptors(desc, self.encoding)}
