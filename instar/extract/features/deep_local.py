"""Deep local features from a CNN trunk (DELF / HOW style, Detect-to-Retrieve sec. 5.2 "Image representation").

Every position of the trunk's map at each image scale is a local descriptor; its *attention* is the L2 norm of
the activation there (HOW's choice: no learned attention head, the feature strength itself), and the
`max_features` strongest over all scales are kept. Each kept activation is L2-normalised, PCA-whitened to `dim`
dimensions and L2-normalised again; the whitening is learned from the training images' features
(`fit_extractor`, on images separate from the indexed ones), as DELF's PCA is.

Positions: a map cell j at scale s covers input pixels [j*t, (j+1)*t) of the image resized by s, t being the
map's stride on that axis (input size / map size); the feature's keypoint is the centre of that cell,
((j + 0.5) * t) / s, in the pixels of the described image, its `size` the cell side t / s, its angle 0.

The scale-1 map is kept with the features (`LocalFeatures.map`) so a regions stage (learned proposals on the
same tap, a grid) can run on it without a second forward pass.
"""
from __future__ import annotations

import weakref
from typing import Annotated, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.norms import l2n
from ...core.protocols import FeaturesStage
from ...core.registry import FEATURES, Range, TRUNKS
from ..whitening import PCAWhitening
from .cnn import feature_maps
from .local import LocalFeatures


def map_positions(fmap_hw: tuple[int, int], input_size: tuple[int, int], scale_xy: tuple[float, float]) -> np.ndarray:
    """Centres of every cell of an (h, w) map computed from an input of (W', H') pixels, in the pixels of the
    described image (the input was that image resized by (sx, sy)); (h*w, 2) float32 [x, y], row-major."""
    h, w = fmap_hw
    Wi, Hi = input_size
    tx, ty = Wi / w, Hi / h
    xs = (np.arange(w) + 0.5) * tx / scale_xy[0]
    ys = (np.arange(h) + 0.5) * ty / scale_xy[1]
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def raw_local_features(model, image: Image.Image, scales: Sequence[float], max_features: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]:
    """The `max_features` strongest map positions of `image` over all `scales`: points (N, 4) [x, y, size, 0],
    raw activations (N, C) float32, attention (N,) float32 (activation L2 norm, best first), and the map of the
    first scale (C, h, w)."""
    maps = feature_maps(model, image, scales)
    W, H = image.size
    pts, acts = [], []
    for s, fmap in zip(scales, maps):
        C, h, w = fmap.shape
        # the input feature_maps fed the trunk for this scale (never below its minimum size)
        Wi, Hi = (W, H) if s == 1.0 else (max(int(W * s), 32), max(int(H * s), 32))
        sx, sy = Wi / W, Hi / H
        xy = map_positions((h, w), (Wi, Hi), (sx, sy))
        size = np.full((len(xy), 1), 0.5 * (Wi / w / sx + Hi / h / sy), np.float32)
        pts.append(np.concatenate([xy, size, np.zeros_like(size)], axis=1))
        acts.append(fmap.reshape(C, h * w).T.numpy())
    points, activations = np.concatenate(pts), np.concatenate(acts).astype(np.float32)
    attention = np.linalg.norm(activations, axis=1)
    order = np.argsort(-attention, kind="stable")
    if max_features > 0:
        order = order[:max_features]
    order = order[attention[order] > 0]
    points[:, 0] = np.clip(points[:, 0], 0, W - 1e-3)
    points[:, 1] = np.clip(points[:, 1], 0, H - 1e-3)
    return points[order], activations[order], attention[order], maps[0]


@FEATURES.register("deep-local", choices={"arch": TRUNKS.names})
class DeepLocalFeatures(FeaturesStage):
    """Deep local features: every map position at every scale, the `max_features` with the largest activation norm, L2 -> PCA-whitened to `dim` -> L2 (DELF/HOW)."""
    kind = "local"
    learns = True

    def __init__(self, *, arch: str = "efficientnet-lite0", weights: str = "imagenet", layer: str = "stride32",
                 scales: Annotated[tuple[float, ...], Range(gt=0, le=8)] = (1.0, 0.7071067811865476, 0.5), max_features: Annotated[int, Range(ge=1)] = 1000,
                 dim: Annotated[int, Range(ge=1)] = 128, max_vectors: Annotated[int, Range(ge=2)] = 200_000):
        if max_features < 1:
            raise ValueError(f"features.max_features = {max_features}: must be at least 1")
        if dim < 1:
            raise ValueError(f"features.dim = {dim}: must be at least 1")
        self.arch, self.weights, self.layer = arch, weights, layer
        self.scales, self.max_features, self.dim, self.max_vectors = [float(s) for s in scales], max_features, dim, max_vectors
        self.weights_mirror: str | None = None
        self._model = None
        self.extras: dict = {}
        self.whitening: PCAWhitening | None = None
        self._fit_cache: dict[int, tuple] = {}

    @property
    def model(self):
        """The trunk, loaded on first use."""
        if self._model is None:
            self._model, self.extras = TRUNKS.entry(self.arch).factory(self.weights, self.layer, self.weights_mirror)
            if self.dim > self._model.out_channels:
                raise ValueError(f"features.dim = {self.dim}: more than the {self._model.out_channels} channels of "
                                 f"{self.arch} {self.layer or 'default layer'}; PCA cannot add dimensions")
        return self._model

    @property
    def stride(self) -> int:
        return self.model.stride

    @property
    def fitted(self) -> bool:
        return self.whitening is not None

    def raw(self, image: Image.Image):
        return raw_local_features(self.model, image, self.scales, self.max_features)

    def fit_extractor(self, extractor, images, rng: np.random.Generator, progress) -> "DeepLocalFeatures":
        """Learn the PCA-whitening from the training images' strongest raw activations (L2-normalised), at most
        `max_vectors` of them drawn evenly from the images."""
        per_image = max(1, self.max_vectors // max(len(images), 1))
        chunks = []
        for im in progress(images, desc="deep local features for the whitening"):
            raw = self.raw(im)
            # the next learned stage (a codebook) describes the same training images: keep their raw features
            # until it has (or until the image is gone) instead of running the trunk twice
            self._fit_cache[id(im)] = raw
            weakref.finalize(im, self._fit_cache.pop, id(im), None)
            acts = raw[1]
            if len(acts) > per_image:
                acts = acts[rng.choice(len(acts), per_image, replace=False)]
            chunks.append(l2n(acts))
        x = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)
        if len(x) <= self.dim:
            raise ValueError(f"deep-local features: {len(x)} training descriptors cannot fit a {self.dim}-D "
                             "PCA-whitening; give more training images")
        self.whitening = PCAWhitening(self.dim).fit(x)
        return self

    def __call__(self, image: Image.Image) -> LocalFeatures:
        if self.whitening is None:
            raise RuntimeError("deep-local features: the PCA-whitening must be fitted on training images first")
        raw = self._fit_cache.pop(id(image), None)
        points, acts, attention, fmap = raw if raw is not None else self.raw(image)
        desc = l2n(self.whitening.transform(l2n(acts))) if len(acts) else np.zeros((0, self.whitening.dim_), np.float32)
        return LocalFeatures(points, np.ascontiguousarray(desc, dtype=np.float32), scores=attention, map=fmap)

    def region_map(self, image: Image.Image, local: LocalFeatures) -> tuple[torch.Tensor, int]:
        """The map a regions stage runs on: the trunk's scale-1 map of this image, and its stride."""
        return local.map, self.stride

    def state(self) -> dict[str, np.ndarray]:
        return {f"pca.{k}": v for k, v in self.whitening.state().items()} if self.whitening is not None else {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "pca.projection" in state:
            self.whitening = PCAWhitening.from_state({k[4:]: v for k, v in state.items() if k.startswith("pca.")})
