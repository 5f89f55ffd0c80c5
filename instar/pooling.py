"""Pooling stage: conv feature maps (..., C, H, W) -> global vectors (..., C); local descriptors -> VLAD.

The functions are the papers' layers: each CNN pooling reduces the last two (spatial) dimensions of a
float32 torch tensor and returns the un-normalised vector. The registered entries of `POOLINGS` (selected by
a preset's `pooling.method`) wrap them into stage objects: `stage(views, regions, whiten)` turns one image's
features (one map per scale, or one set of local descriptors) into its (D,) float32 vector before
image-level whitening.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .codebook import Codebook
from .registry import POOLINGS, REGION_POOLINGS
from .whitening import l2n, power_normalize


def mac(x: torch.Tensor) -> torch.Tensor:
    """MAC: per-channel spatial maximum (Tolias et al.; survey sec. 4.2.1). (..., C, H, W) -> (..., C)."""
    return x.amax(dim=(-2, -1))


def center_prior(height: int, width: int, dtype=torch.float32) -> torch.Tensor:
    """SPoC's Gaussian centre prior, sigma = 1/3 of the distance from the centre to the nearest border. (H, W)."""
    sigma = min(height, width) / 2.0 / 3.0
    ys = torch.arange(height, dtype=dtype) + 0.5 - height / 2.0
    xs = torch.arange(width, dtype=dtype) + 0.5 - width / 2.0
    d2 = ys[:, None] ** 2 + xs[None, :] ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def spoc(x: torch.Tensor, use_center_prior: bool = True) -> torch.Tensor:
    """SPoC: (centre-prior weighted) average of the activations (Babenko & Lempitsky; survey sec. 4.2.1). (..., C)."""
    if not use_center_prior:
        return x.mean(dim=(-2, -1))
    w = center_prior(x.shape[-2], x.shape[-1], x.dtype).to(x.device)
    return (x * w).sum(dim=(-2, -1)) / w.sum()


def sum_pool(x: torch.Tensor) -> torch.Tensor:
    """Sum pooling of activations, the IPA-sum filter of Salvador et al. (sec. 3.1). (..., C)."""
    return x.sum(dim=(-2, -1))


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """GeM: (mean x^p)^(1/p) over positions (Radenović et al.; survey sec. 4.2.1). p=1 is SPoC, p->inf is MAC.

    Computed as m * (mean (x/m)^p)^(1/p) with m the per-channel maximum, so large p does not overflow.
    """
    x = x.clamp_min(eps)
    m = x.amax(dim=(-2, -1), keepdim=True)
    return m[..., 0, 0] * (x / m).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def crow(x: torch.Tensor, a: float = 2.0, b: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """CroW: cross-dimensional spatial and channel weighting of summed activations (Kalantidis et al.). (C, H, W) -> (C,).

    Spatial weight S = (Σ_c x / ||Σ_c x||_a)^(1/b); channel weight Ω_k = log(Σ_j Q_j / (Q_k + eps)), Q_k the
    fraction of positions where channel k is non-zero.
    """
    if x.dim() != 3:
        raise ValueError(f"crow expects a (C, H, W) map, got shape {tuple(x.shape)}")
    x = x.clamp_min(0.0)  # CroW weighs rectified activations; a tap before any ReLU (EfficientNet's blocks) has negatives
    s = x.sum(dim=0)
    s = (s / s.pow(a).sum().pow(1.0 / a).clamp_min(eps)).pow(1.0 / b)
    q = (x > 0).float().mean(dim=(-2, -1))
    omega = torch.log(q.sum().clamp_min(eps) / (q + eps))
    return (x * s).sum(dim=(-2, -1)) * omega


def region_mac(x: torch.Tensor, regions: np.ndarray) -> torch.Tensor:
    """RoI max-pooling (RPA-max, Salvador et al. sec. 3.1; DRH sec. 3.1.2): MAC of each [x0, y0, x1, y1) cell box.
    (C, H, W), (R, 4) int -> (R, C)."""
    out = [x[:, y0:y1, x0:x1].amax(dim=(-2, -1)) for x0, y0, x1, y1 in np.asarray(regions).tolist()]
    return torch.stack(out) if out else x.new_zeros((0, x.shape[0]))


def region_sum(x: torch.Tensor, regions: np.ndarray) -> torch.Tensor:
    """RoI sum-pooling (RPA-sum, Salvador et al. sec. 3.1) through a summed-area table. (C, H, W), (R, 4) int -> (R, C)."""
    r = torch.as_tensor(np.asarray(regions, dtype=np.int64).reshape(-1, 4))
    sat = torch.nn.functional.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # (C, H+1, W+1)
    x0, y0, x1, y1 = r.unbind(1)
    total = sat[:, y1, x1] - sat[:, y0, x1] - sat[:, y1, x0] + sat[:, y0, x0]  # (C, R)
    return total.T.to(x.dtype)


def rmac(x: torch.Tensor, regions: np.ndarray, whiten: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """R-MAC: region MACs, each L2 -> PCA-whitening -> L2, summed and L2-normalised (R-MAC paper sec. 3.1). (D,)."""
    v = l2n(region_mac(x, regions))
    if whiten is not None:
        v = l2n(whiten(v))
    return l2n(v.sum(dim=0))


def vlad(descriptors: np.ndarray, centroids: np.ndarray, assignments: np.ndarray, *, power: float = 0.5,
         intra: bool = True) -> np.ndarray:
    """VLAD: per-word sums of residuals x_t - c_k (survey eq. 4-5), then intra-, power- and L2-normalised.

    descriptors (T, D) float32, centroids (K, D) float32, assignments (T,) int nearest-word ids -> (K*D,) float32.
    `power` is the signed power exponent (1 disables it); `intra` L2-normalises each word's block first.
    """
    K, D = centroids.shape
    v = np.zeros((K, D), dtype=np.float64)
    if len(descriptors):
        np.add.at(v, assignments, descriptors.astype(np.float64) - centroids[assignments])
    if intra:
        v = l2n(v, axis=1)
    v = v.reshape(-1)
    if power != 1.0:
        v = power_normalize(v, power)
    return l2n(v).astype(np.float32)


# ------------------------------------------------------------------------------------------ stage entries

Whiten = Callable[[torch.Tensor], torch.Tensor]


class MapPooling:
    """Base of the poolings over CNN maps: each scale's (C, h, w) map is pooled and L2-normalised, the scales
    are summed and the sum L2-normalised (cirtorch's multi-scale rule). Subclasses define `pool_map`."""
    input_kind = "maps"      # what the features stage must produce
    needs_regions = False    # pools over the regions stage's boxes
    whitens_regions = False  # the whitening is learned on, and applied to, region vectors (R-MAC)
    learns = False

    def pool_map(self, fmap: torch.Tensor, regions, whiten: Whiten | None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, maps: Sequence[torch.Tensor], regions, whiten: Whiten | None = None) -> np.ndarray:
        """One image's maps (one per scale) -> (D,) float32, L2-normalised."""
        v = sum(self.pool_map(fmap, regions, whiten) for fmap in maps)
        return l2n(v).numpy().astype(np.float32)

    def whitening_inputs(self, maps: Sequence[torch.Tensor], regions) -> np.ndarray:
        """The vectors of one image that an image-level whitening is learned on: (1, D) float32."""
        return self(maps, regions)[None]


@POOLINGS.register("mac")
class MACPooling(MapPooling):
    """MAC: per-channel maximum (Tolias et al.; survey sec. 4.2.1)."""

    def pool_map(self, fmap, regions, whiten):
        return l2n(mac(fmap))


@POOLINGS.register("spoc")
class SPoCPooling(MapPooling):
    """SPoC: centre-prior weighted sum (Babenko & Lempitsky; survey sec. 4.2.1)."""

    def __init__(self, *, center_prior: bool = True):
        self.center_prior = center_prior

    def pool_map(self, fmap, regions, whiten):
        return l2n(spoc(fmap, self.center_prior))


@POOLINGS.register("sum")
class SumPooling(MapPooling):
    """Sum pooling, the IPA-sum filter of Salvador et al. (sec. 3.1)."""

    def pool_map(self, fmap, regions, whiten):
        return l2n(sum_pool(fmap))


@POOLINGS.register("gem")
class GeMPooling(MapPooling):
    """GeM with exponent p (Radenović et al.; survey sec. 4.2.1)."""

    def __init__(self, *, p: float = 3.0):
        self.p = p

    def pool_map(self, fmap, regions, whiten):
        return l2n(gem(fmap, self.p))


@POOLINGS.register("crow")
class CroWPooling(MapPooling):
    """CroW: cross-dimensional weighted sum (Kalantidis et al.; survey sec. 4.2.1)."""

    def __init__(self, *, a: float = 2.0, b: float = 2.0):
        self.a, self.b = a, b

    def pool_map(self, fmap, regions, whiten):
        return l2n(crow(fmap, self.a, self.b))


@POOLINGS.register("rmac")
class RMACPooling(MapPooling):
    """R-MAC: region MACs over the regions stage's boxes, each L2 -> whitening -> L2, summed (R-MAC paper sec. 3.1)."""
    needs_regions = True
    whitens_regions = True

    def pool_map(self, fmap, regions, whiten):
        return rmac(fmap, regions(fmap).cells, whiten)

    def whitening_inputs(self, maps, regions):
        """Every L2-normalised region MAC of every scale: (sum of R over scales, C) float32."""
        return np.concatenate([l2n(region_mac(fmap, regions(fmap).cells)).numpy() for fmap in maps])


@POOLINGS.register("vlad")
class VLADPooling:
    """VLAD over a k-means codebook learned on the training images' local descriptors (survey eq. 4-5)."""
    input_kind = "local"
    needs_regions = False
    whitens_regions = False
    learns = True

    def __init__(self, *, k: int = 64, power: float = 0.5, intra: bool = True, niter: int = 20, seed: int = 0):
        self.k, self.power, self.intra, self.niter, self.seed = k, power, intra, niter, seed
        self.codebook: Codebook | None = None

    @property
    def fitted(self) -> bool:
        return self.codebook is not None

    def fit_extractor(self, extractor, images: Sequence, rng: np.random.Generator, progress) -> "VLADPooling":
        """Learn the codebook from the training images' local features, described by `extractor`'s features stage."""
        return self.fit((extractor.features(im) for im in progress(images, desc="local features for the codebook")),
                        len(images), rng)

    def fit(self, local_sets: Iterable, n_images: int, rng: np.random.Generator) -> "VLADPooling":
        """Learn the codebook from the training images' local features (at most ~200k descriptors in all)."""
        per_image = max(50, 200_000 // max(n_images, 1))
        chunks = []
        for local in local_sets:
            d = local.descriptors
            if len(d) > per_image:
                d = d[rng.choice(len(d), per_image, replace=False)]
            chunks.append(d)
        self.codebook = Codebook(self.k, self.niter, self.seed).fit(np.concatenate(chunks))
        return self

    def __call__(self, local, regions=None, whiten=None) -> np.ndarray:
        d = local.descriptors
        return vlad(d, self.codebook.centroids, self.codebook.assign(d), power=self.power, intra=self.intra)

    def whitening_inputs(self, local, regions) -> np.ndarray:
        return self(local)[None]

    def state(self) -> dict[str, np.ndarray]:
        return {f"codebook.{k}": v for k, v in self.codebook.state().items()} if self.codebook is not None else {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "codebook.centroids" in state:
            self.codebook = Codebook.from_state({"centroids": state["codebook.centroids"]})


@REGION_POOLINGS.register("none")
class NoRegionPooling:
    """No region descriptors: the image is one global vector."""
    stores_regions = False


@REGION_POOLINGS.register("max")
class RPAMax:
    """RPA-max: RoI max-pooling of each region on the scale-1 map, L2-normalised (Salvador et al. sec. 3.1)."""
    stores_regions = True
    input_kind = "maps"

    def __call__(self, maps: Sequence[torch.Tensor], regions) -> np.ndarray:
        """(R, C) float32, one L2-normalised row per region of `regions` (a `Regions`)."""
        return l2n(region_mac(maps[0], regions.cells)).numpy().astype(np.float32)


@REGION_POOLINGS.register("sum")
class RPASum:
    """RPA-sum: RoI sum-pooling of each region on the scale-1 map, L2-normalised (Salvador et al. sec. 3.1)."""
    stores_regions = True
    input_kind = "maps"

    def __call__(self, maps: Sequence[torch.Tensor], regions) -> np.ndarray:
        return l2n(region_sum(maps[0], regions.cells)).numpy().astype(np.float32)
