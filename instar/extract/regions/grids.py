"""The grid region methods: `none` (the whole map, one region) and `rmac` (R-MAC's multi-level grid)."""
from __future__ import annotations

from typing import Annotated

from ...core.protocols import RegionsStage
from ...core.registry import REGIONS, Range
from . import MapGeometry, Regions, rmac_regions, whole_region


@REGIONS.register("none")
class WholeMap(RegionsStage):
    """No proposals: the single region covering the whole map."""

    def __call__(self, fmap, geometry: MapGeometry, image=None) -> Regions:
        return Regions.from_cells(whole_region(fmap.shape[-2], fmap.shape[-1]), geometry)


@REGIONS.register("rmac")
class RMACGrid(RegionsStage):
    """R-MAC's rigid multi-level grid of square regions (R-MAC paper sec. 3.1)."""

    def __init__(self, *, levels: Annotated[int, Range(ge=1, le=10)] = 3, overlap: Annotated[float, Range(ge=0, lt=1)] = 0.4):
        self.levels, self.overlap = levels, overlap

    def __call__(self, fmap, geometry: MapGeometry, image=None) -> Regions:
        return Regions.from_cells(rmac_regions(fmap.shape[-2], fmap.shape[-1], self.levels, self.overlap), geometry)
