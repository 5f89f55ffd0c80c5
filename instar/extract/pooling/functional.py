"""The pooling layers as pure functions (the papers' equations): conv maps (..., C, H, W) float32 torch tensors ->
un-normalised (..., C) vectors, regions of a map -> one vector each, local descriptors -> VLAD."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ...core.norms import l2n, power_normalize


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
