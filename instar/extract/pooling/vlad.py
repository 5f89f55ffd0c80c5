"""VLAD pooling of local descriptors over a k-means codebook (`pooling.method = "vlad"`; survey eq. 4-5)."""
from __future__ import annotations

from typing import Annotated, Iterable, Sequence

import numpy as np

from ...core.codebook import Codebook, sample_descriptors
from ...core.protocols import PoolingStage
from ...core.registry import POOLINGS, Range
from .functional import vlad


@POOLINGS.register("vlad")
class VLADPooling(PoolingStage):
    """VLAD over a k-means codebook learned on the training images' local descriptors (survey eq. 4-5)."""
    input_kind = "local"
    needs_regions = False
    whitens_regions = False
    learns = True

    def __init__(self, *, k: Annotated[int, Range(ge=1)] = 64, power: Annotated[float, Range(gt=0, le=1)] = 0.5, intra: bool = True, niter: Annotated[int, Range(ge=1)] = 20, seed: Annotated[int, Range(ge=0)] = 0):
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
        sample = sample_descriptors((local.descriptors for local in local_sets), n_images, rng, 200_000, minimum=50)
        self.codebook = Codebook(self.k, self.niter, self.seed).fit(sample)
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
