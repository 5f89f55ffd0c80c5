"""The option sections that are not pipeline steps: `train` (how learned stages see their training images) and
`search` (how many hits a search returns by default)."""
from __future__ import annotations

from typing import Annotated

from ..core.protocols import OptionsStage
from ..core.registry import Range, SEARCH, TRAIN


@TRAIN.register("train")
class TrainingSet(OptionsStage):
    """How the learned stages (codebook, whitening) see their separate training images: at most `max_images`."""

    def __init__(self, *, max_images: Annotated[int, Range(ge=1)] = 2000):
        self.max_images = max_images


@SEARCH.register("search")
class SearchOptions(OptionsStage):
    """How many hits a search returns by default (`k`)."""

    def __init__(self, *, k: Annotated[int, Range(ge=1)] = 100):
        self.k = k
