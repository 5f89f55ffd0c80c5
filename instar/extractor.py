"""Descriptor extraction: composes the stages a preset names (image -> features -> regions -> pooling -> whitening).

`Extractor(preset)` turns an image file (optionally a box on it) into one (D,) float32 L2-normalised global
descriptor. Presets that learn something (a VLAD codebook, a PCA-whitening) are `fit` on a separate
image set first; the learned arrays round-trip through `state()` / `load_state()` and are stored with an index.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import images as imgs
from . import pooling
from .codebook import Codebook
from .features.local import rootsift
from .presets import Preset
from .regions import rmac_regions
from .whitening import PCAWhitening, l2n

log = logging.getLogger(__name__)

Progress = Callable[[Iterable], Iterable]


def _no_progress(it: Iterable, **_: object) -> Iterable:
    return it


class Extractor:
    """Image -> (D,) float32 L2-normalised descriptor, as the preset prescribes."""

    def __init__(self, preset: Preset, *, weights_mirror: str | None = None):
        self.preset = preset
        self.weights_mirror = weights_mirror
        self.codebook: Codebook | None = None
        self.whitening: PCAWhitening | None = None
        self._model = None
        self.extras: dict = {}

    # --- configuration -------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.preset["features"]["type"]

    @property
    def method(self) -> str:
        return self.preset["pooling"]["method"]

    @property
    def is_fitted(self) -> bool:
        needs_codebook = self.method == "vlad"
        needs_whitening = self.preset["whitening"]["method"] != "none"
        return (not needs_codebook or self.codebook is not None) and (not needs_whitening or self.whitening is not None)

    @property
    def model(self):
        """The CNN trunk, loaded on first use (weights may need a download or a cache read)."""
        if self._model is None:
            from .features.cnn import load_trunk
            f = self.preset["features"]
            self._model, self.extras = load_trunk(f["arch"], f["weights"], mirror=self.weights_mirror)
        return self._model

    # --- stage helpers -------------------------------------------------------------------------
    def load(self, path: Path | str, box: Sequence[float] | None = None):
        return imgs.prepare(path, self.preset["image"]["max_size"], box)

    def _local(self, image) -> np.ndarray:
        _, desc = rootsift(image, self.preset["features"]["max_keypoints"])
        return desc

    def _maps(self, image) -> list[torch.Tensor]:
        from .features.cnn import feature_maps
        return feature_maps(self.model, image, self.preset["features"]["scales"])

    def _regions(self, fmap: torch.Tensor) -> np.ndarray:
        p = self.preset["pooling"]
        return rmac_regions(fmap.shape[-2], fmap.shape[-1], p["levels"], p["overlap"])

    def _pool_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """One scale's (C, h, w) map -> its pooled vector (before the image-level whitening)."""
        p = self.preset["pooling"]
        m = self.method
        if m == "rmac":
            whiten = self.whitening.transform if self.whitening is not None else None
            return pooling.rmac(fmap, self._regions(fmap), whiten)
        if m == "gem":
            return l2n(pooling.gem(fmap, p["p"]))
        if m == "spoc":
            return l2n(pooling.spoc(fmap, p["center_prior"]))
        return l2n(pooling.POOLINGS[m](fmap))

    def _pre_whitening(self, image) -> np.ndarray:
        """Descriptor before image-level whitening: VLAD, or the scale-summed L2-normalised CNN pooling. (D0,)."""
        if self.kind == "rootsift":
            desc = self._local(image)
            p = self.preset["pooling"]
            return pooling.vlad(desc, self.codebook.centroids, self.codebook.assign(desc), power=p["power"], intra=p["intra"])
        v = sum(self._pool_map(fmap) for fmap in self._maps(image))
        return l2n(v).numpy().astype(np.float32)

    # --- public API ----------------------------------------------------------------------------
    def describe_image(self, image) -> np.ndarray:
        """A prepared PIL image -> (D,) float32, L2-normalised."""
        if not self.is_fitted:
            raise RuntimeError(f"preset {self.preset.name!r} must be fitted on training images before describing")
        v = self._pre_whitening(image)
        if self.whitening is not None and self.method != "rmac":
            v = l2n(self.whitening.transform(v))
        return np.asarray(v, dtype=np.float32)

    def describe(self, path: Path | str, box: Sequence[float] | None = None) -> np.ndarray:
        """An image file (cropped to `box` at full resolution first) -> (D,) float32, L2-normalised."""
        return self.describe_image(self.load(path, box))

    def fit(self, paths: Sequence[Path], progress: Progress = _no_progress, seed: int = 0) -> "Extractor":
        """Learn what the preset needs (VLAD codebook, PCA-whitening) from a separate set of image files."""
        paths = list(paths)
        if not paths:
            raise ValueError(f"preset {self.preset.name!r} needs training images (codebook/whitening); none given")
        rng = np.random.default_rng(seed)
        w = self.preset["whitening"]
        if len(paths) > w["max_train_images"]:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), w["max_train_images"], replace=False))]
        loaded = []
        for p in progress(paths, desc="loading training images"):
            try:
                loaded.append(self.load(p))
            except imgs.ImageLoadError as e:
                log.warning("training set: skipping %s", e)
        if not loaded:
            raise ValueError(f"preset {self.preset.name!r}: none of the {len(paths)} training images could be read")
        if self.method == "vlad":
            p = self.preset["pooling"]
            per_image = max(50, 200_000 // len(loaded))
            chunks = []
            for im in progress(loaded, desc="local features for the codebook"):
                d = self._local(im)
                if len(d) > per_image:
                    d = d[rng.choice(len(d), per_image, replace=False)]
                chunks.append(d)
            self.codebook = Codebook(p["k"], p["niter"], p["seed"]).fit(np.concatenate(chunks))
        if w["method"] == "pca":
            self.whitening = None
            if self.method == "rmac":
                vecs = []
                for im in progress(loaded, desc="region vectors for whitening"):
                    for fmap in self._maps(im):
                        vecs.append(l2n(pooling.region_mac(fmap, self._regions(fmap))).numpy())
                train = np.concatenate(vecs)
            else:
                train = np.stack([self._pre_whitening(im) for im in progress(loaded, desc="descriptors for whitening")])
            if len(train) > w["max_train_vectors"]:
                train = train[rng.choice(len(train), w["max_train_vectors"], replace=False)]
            dim = w["dim"] or None
            self.whitening = PCAWhitening(dim).fit(train)
            if dim and self.whitening.dim_ < dim:
                log.warning("PCA-whitening kept %d of the %d dimensions asked for: %d training vectors span only that many",
                            self.whitening.dim_, dim, len(train))
        return self

    def state(self) -> dict[str, np.ndarray]:
        """Learned arrays, prefixed by stage name, for storage with an index."""
        out: dict[str, np.ndarray] = {}
        if self.codebook is not None:
            out.update({f"codebook.{k}": v for k, v in self.codebook.state().items()})
        if self.whitening is not None:
            out.update({f"whitening.{k}": v for k, v in self.whitening.state().items()})
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> "Extractor":
        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}

        if part("codebook"):
            self.codebook = Codebook.from_state(part("codebook"))
        if part("whitening"):
            self.whitening = PCAWhitening.from_state(part("whitening"))
        return self
