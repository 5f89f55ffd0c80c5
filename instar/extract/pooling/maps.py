"""Pooling entries over CNN maps (`pooling.method` mac, spoc, sum, gem, crow, rmac): thin wrappers of
`functional`'s layers; each scale's map pooled and L2-normalised, the scales summed and L2-normalised."""
from __future__ import annotations

from typing import Annotated, Callable, Sequence

import numpy as np
import torch

from ...core.norms import l2n
from ...core.protocols import PoolingStage
from ...core.registry import POOLINGS, Range
from .functional import crow, gem, mac, region_mac, rmac, spoc, sum_pool


Whiten = Callable[[torch.Tensor], torch.Tensor]


class MapPooling(PoolingStage):
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

    def __init__(self, *, p: Annotated[float, Range(gt=0)] = 3.0):
        self.p = p

    def pool_map(self, fmap, regions, whiten):
        return l2n(gem(fmap, self.p))


@POOLINGS.register("crow")
class CroWPooling(MapPooling):
    """CroW: cross-dimensional weighted sum (Kalantidis et al.; survey sec. 4.2.1)."""

    def __init__(self, *, a: Annotated[float, Range(gt=0)] = 2.0, b: Annotated[float, Range(gt=0)] = 2.0):
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
