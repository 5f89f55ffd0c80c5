"""Descriptor extraction: composes the stages a preset names (image -> features -> regions -> pooling -> whitening).

Each stage is an object built from its preset section through its registry (`instar.stages.SECTIONS`); the
extractor only wires them together, so a new trunk, region method, pooling or whitening is a new registry
entry, never a branch here.

`Extractor(preset)` turns an image file (optionally a box on it) into one (D,) float32 L2-normalised global
descriptor. Stages that learn something (a VLAD codebook, a PCA-whitening) are `fit` on a separate image set
first; their arrays round-trip through `state()` / `load_state()` (keys prefixed by section) and are stored
with an index.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import images as imgs
from .presets import Preset
from .stages import SECTIONS

log = logging.getLogger(__name__)

Progress = Callable[[Iterable], Iterable]

# sections whose stage objects the extractor runs, in pipeline order (the rest configure search)
EXTRACTION = ("image", "features", "regions", "pooling", "whitening")
LEARNED = ("pooling", "whitening")


def _no_progress(it: Iterable, **_: object) -> Iterable:
    return it


class Extractor:
    """Image -> (D,) float32 L2-normalised descriptor, as the preset prescribes."""

    def __init__(self, preset: Preset, *, weights_mirror: str | None = None):
        self.preset = preset
        self.weights_mirror = weights_mirror
        self.image = SECTIONS["image"].build_section(preset["image"])
        self.features = SECTIONS["features"].build_section(preset["features"])
        if hasattr(self.features, "weights_mirror"):
            self.features.weights_mirror = weights_mirror
        self.regions = SECTIONS["regions"].build_section(preset["regions"])
        self.pooling = SECTIONS["pooling"].build_section(preset["pooling"])
        self.whitening = SECTIONS["whitening"].build_section(preset["whitening"])

    # --- configuration -------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return all(getattr(self._stage(s), "fitted", True) for s in LEARNED)

    def _stage(self, section: str):
        return getattr(self, section)

    @property
    def model(self):
        """The CNN trunk of a map-features preset, loaded on first use."""
        return self.features.model

    @property
    def extras(self) -> dict:
        return getattr(self.features, "extras", {})

    # --- describing ----------------------------------------------------------------------------
    def load(self, path: Path | str, box: Sequence[float] | None = None):
        """The image stage: load, crop to `box` at full resolution, shrink."""
        return self.image(path, box)

    def _pooled(self, views) -> np.ndarray:
        """Pooled (D0,) vector of one image's features, before image-level whitening (region-level applied)."""
        region_whiten = self.whitening.transform if self.pooling.whitens_regions else None
        return self.pooling(views, self.regions, region_whiten)

    def describe_image(self, image) -> np.ndarray:
        """A prepared PIL image -> (D,) float32, L2-normalised."""
        if not self.is_fitted:
            raise RuntimeError(f"preset {self.preset.name!r} must be fitted on training images before describing")
        v = self._pooled(self.features(image))
        if not self.pooling.whitens_regions:
            v = self.whitening.apply(v)
        return np.asarray(v, dtype=np.float32)

    def describe(self, path: Path | str, box: Sequence[float] | None = None) -> np.ndarray:
        """An image file (cropped to `box` at full resolution first) -> (D,) float32, L2-normalised."""
        return self.describe_image(self.load(path, box))

    # --- learning ------------------------------------------------------------------------------
    def fit(self, paths: Sequence[Path], progress: Progress = _no_progress, seed: int = 0) -> "Extractor":
        """Learn what the preset's stages learn (VLAD codebook, PCA-whitening) from a separate set of image files."""
        paths = list(paths)
        if not paths:
            raise ValueError(f"preset {self.preset.name!r} needs training images (codebook/whitening); none given")
        rng = np.random.default_rng(seed)
        limit = self.preset["train"]["max_images"]
        if len(paths) > limit:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
        loaded = []
        for p in progress(paths, desc="loading training images"):
            try:
                loaded.append(self.load(p))
            except imgs.ImageLoadError as e:
                log.warning("training set: skipping %s", e)
        if not loaded:
            raise ValueError(f"preset {self.preset.name!r}: none of the {len(paths)} training images could be read")
        if self.pooling.learns:
            views = (self.features(im) for im in progress(loaded, desc=f"features for the {self.pooling.__class__.__name__}"))
            self.pooling.fit(views, len(loaded), rng)
        if self.whitening.learns:
            vectors = [self.pooling.whitening_inputs(self.features(im), self.regions)
                       for im in progress(loaded, desc="vectors for whitening")]
            self.whitening.fit(np.concatenate(vectors), rng)
        return self

    def state(self) -> dict[str, np.ndarray]:
        """Learned arrays, prefixed by section name, for storage with an index."""
        out: dict[str, np.ndarray] = {}
        for section in LEARNED:
            stage = self._stage(section)
            if getattr(stage, "learns", False) and stage.fitted:
                out.update({f"{section}.{k}": v for k, v in stage.state().items()})
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> "Extractor":
        for section in LEARNED:
            part = {k[len(section) + 1:]: v for k, v in state.items() if k.startswith(section + ".")}
            stage = self._stage(section)
            if part and hasattr(stage, "load_state"):
                stage.load_state(part)
        return self
