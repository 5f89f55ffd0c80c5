"""Model-level fusion (survey sec. 4.1.3): one image described by several presets, stored as one global vector.

    [features]
    type = "fusion"
    parts = "sscd, spoc-lite0"      # built-in preset names or .toml paths, comma-separated
    weights = [0.5, 0.5]            # one per part: its share of the similarity

    [pooling]
    method = "none"                 # the fused vector passes through (L2)

Each part runs its own extraction stages (image size, trunk, pooling, whitening) on the image the fusion preset's
image stage prepared (so that stage's `max_size` should be at least every part's; a query box is cropped once,
at full resolution, before). Part i's L2-normalised vector v_i is scaled by sqrt(w_i / sum w) and the parts are
concatenated: the fused vector has unit norm and the inner product of two of them is

    sum_i w_i cos(v_i, v'_i) / sum_i w_i,

the weighted mean of the parts' cosine similarities (the score-level fusion of the survey, computed by one
inner product, so every filter, re-ranker and expansion works on it unchanged). The weights are fixed in the
preset. A `whitening.method = "pca"` section after it PCA-whitens the fused vector, learned on the training set
like any whitening. Parts must be weight-free (no stage learned from training images): a part's learned stage
would need its own fitting and storage, which this entry does not do.
"""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...core.protocols import FeaturesStage
from ...core.registry import FEATURES, Range
from ...presets import PresetError, load_preset
from ..extractor import Extractor


class FusionError(ValueError):
    """A fusion that cannot be built: no parts, weights that do not match them, a part that cannot be used."""


def part_names(parts: str) -> list[str]:
    return [p.strip() for p in parts.split(",") if p.strip()]


@FEATURES.register("fusion")
class FusionFeatures(FeaturesStage):
    """Several presets' global vectors of one image (`parts`, comma-separated preset names or .toml files), each
    L2-normalised and weighted so that the fused inner product is the `weights`-weighted mean of their cosines."""
    kind = "global"

    def __init__(self, *, parts: str = "", weights: Annotated[tuple[float, ...], Range(ge=0)] = (1.0,)):
        names = part_names(parts)
        if not names:
            raise FusionError("features.parts is empty: name the presets to fuse, e.g. parts = \"sscd, spoc-lite0\"")
        weights = [float(w) for w in weights]
        if len(weights) != len(names):
            raise FusionError(f"features.weights has {len(weights)} values for {len(names)} parts ({', '.join(names)})")
        if min(weights) < 0 or sum(weights) <= 0:
            raise FusionError(f"features.weights {weights}: each must be >= 0 and their sum positive")
        self.names, self.weights = names, weights
        self.parts = []
        for name in names:
            try:
                preset = load_preset(name)
            except PresetError as e:
                raise FusionError(f"features.parts: {e}") from None
            if preset.needs_training:
                raise FusionError(f"features.parts: preset {preset.name!r} learns from training images "
                                  "(codebook / whitening); a fusion's parts must be weight-free")
            self.parts.append(Extractor(preset))
        total = sum(weights)
        self.scales = [float(np.sqrt(w / total)) for w in weights]

    @property
    def extras(self) -> dict:
        sources = [getattr(p.features, "extras", {}).get("source") for p in self.parts]
        return {"source": ", ".join(f"{n}: {s}" for n, s in zip(self.names, sources) if s)} if any(sources) else {}

    def describe_parts(self, image) -> list[np.ndarray]:
        """Each part's (D_i,) L2-normalised vector of one prepared image (each part prepares it its own way)."""
        return [part.describe_image(part.prepare_loaded(image)) for part in self.parts]

    def fuse(self, vectors) -> np.ndarray:
        """The parts' vectors -> the fused (sum D_i,) float32 vector (unit norm when every part is)."""
        out = []
        for s, v in zip(self.scales, vectors):
            v = np.asarray(v, dtype=np.float32)
            out.append(s * v / max(float(np.linalg.norm(v)), 1e-12))
        return np.concatenate(out).astype(np.float32)

    def __call__(self, image) -> np.ndarray:
        return self.fuse(self.describe_parts(image))
