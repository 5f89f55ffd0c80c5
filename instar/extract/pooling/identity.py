"""The pooling of features that are already one global vector (an ONNX model's embedding, a fusion of presets).

`pooling.method = "none"` pools `global` features: it passes the vector through, L2-normalised. A whitening
stage after it (`whitening.method = "pca"`) is learned on these vectors like on any pooled one.
"""
from __future__ import annotations

import numpy as np

from ...core.norms import l2n
from ...core.protocols import PoolingStage
from ...core.registry import POOLINGS


@POOLINGS.register("none")
class PassThrough(PoolingStage):
    """No pooling: features that are already a global vector (features.type 'onnx', 'fusion') pass through, L2."""
    input_kind = "global"

    def __call__(self, vector, regions=None, whiten=None) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        return l2n(v).astype(np.float32)

    def whitening_inputs(self, vector, regions) -> np.ndarray:
        """The vectors of one image that an image-level whitening is learned on: (1, D) float32."""
        return self(vector)[None]
