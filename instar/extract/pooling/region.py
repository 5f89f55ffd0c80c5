"""Region pooling entries (`region_pooling.method`): one stored descriptor per region (Salvador et al. sec. 3.1)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...core.norms import l2n
from ...core.protocols import RegionPoolingStage
from ...core.registry import REGION_POOLINGS
from .functional import region_mac, region_sum


@REGION_POOLINGS.register("none")
class NoRegionPooling(RegionPoolingStage):
    """No region descriptors: the image is one global vector."""
    stores_regions = False


@REGION_POOLINGS.register("max")
class RPAMax(RegionPoolingStage):
    """RPA-max: RoI max-pooling of each region on the scale-1 map, L2-normalised (Salvador et al. sec. 3.1)."""
    stores_regions = True
    input_kind = "maps"

    def __call__(self, maps: Sequence[torch.Tensor], regions) -> np.ndarray:
        """(R, C) float32, one L2-normalised row per region of `regions` (a `Regions`)."""
        return l2n(region_mac(maps[0], regions.cells)).numpy().astype(np.float32)


@REGION_POOLINGS.register("sum")
class RPASum(RegionPoolingStage):
    """RPA-sum: RoI sum-pooling of each region on the scale-1 map, L2-normalised (Salvador et al. sec. 3.1)."""
    stores_regions = True
    input_kind = "maps"

    def __call__(self, maps: Sequence[torch.Tensor], regions) -> np.ndarray:
        return l2n(region_sum(maps[0], regions.cells)).numpy().astype(np.float32)
