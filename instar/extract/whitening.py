"""Whitening stage: L2 and power normalisation, and PCA-whitening learned on a separate image set.

`WHITENINGS` entries (a preset's `whitening.method`) are the stage objects: `apply(v)` maps an image's
pooled (D,) vector to its final descriptor; learned ones `fit` on training vectors and round-trip their
arrays through `state()` / `load_state()`.
"""
from __future__ import annotations

from typing import Annotated

import logging

import numpy as np
import torch

from ..core.norms import EPS, l2n
from ..core.pca import principal_axes
from ..core.protocols import WhiteningStage
from ..core.registry import Range, WHITENINGS

log = logging.getLogger(__name__)

class PCAWhitening:
    """PCA-whitening: y = diag(lambda)^-1/2 U^T (x - mu), learned with `fit` on (N, D) float vectors.

    Keeps the top `dim` principal directions (all by default). Directions whose eigenvalue is below
    `rel_eps` times the largest are dropped, so the learned map is always finite; `dim_` is the kept count.
    """

    def __init__(self, dim: int | None = None, rel_eps: float = 1e-9):
        self.dim = dim
        self.rel_eps = rel_eps
        self.mean_: np.ndarray | None = None        # (D,) float64
        self.projection_: np.ndarray | None = None  # (D, dim_) float64
        self.eigenvalues_: np.ndarray | None = None

    @property
    def dim_(self) -> int:
        return 0 if self.projection_ is None else self.projection_.shape[1]

    def fit(self, x: np.ndarray) -> "PCAWhitening":
        """Learn the mean and whitening projection from (N, D) vectors, N >= 2."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"PCA-whitening needs at least 2 training vectors as an (N, D) array, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("PCA-whitening training vectors contain NaN or infinity")
        mean, eigval, eigvec = principal_axes(x)
        keep = eigval > self.rel_eps * max(eigval[0], EPS)
        n = int(keep.sum())
        if self.dim is not None:
            n = min(n, int(self.dim))
        if n == 0:
            raise ValueError("PCA-whitening training vectors have zero variance")
        self.mean_ = mean
        self.eigenvalues_ = eigval[:n]
        self.projection_ = eigvec[:, :n] / np.sqrt(eigval[:n])
        return self

    def transform(self, x):
        """Whiten (N, D) or (D,) vectors (numpy float32 or torch float32) to (N, dim_) / (dim_,), not normalised."""
        if self.projection_ is None:
            raise RuntimeError("PCAWhitening.transform called before fit")
        if isinstance(x, torch.Tensor):
            mean = torch.as_tensor(self.mean_, dtype=x.dtype, device=x.device)
            proj = torch.as_tensor(self.projection_, dtype=x.dtype, device=x.device)
            return (x - mean) @ proj
        x = np.asarray(x, dtype=np.float32)
        return ((x - self.mean_.astype(np.float32)) @ self.projection_.astype(np.float32)).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to store with an index."""
        return {"mean": self.mean_, "projection": self.projection_, "eigenvalues": self.eigenvalues_}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "PCAWhitening":
        w = cls(dim=state["projection"].shape[1])
        w.mean_ = np.asarray(state["mean"], dtype=np.float64)
        w.projection_ = np.asarray(state["projection"], dtype=np.float64)
        w.eigenvalues_ = np.asarray(state["eigenvalues"], dtype=np.float64)
        return w


@WHITENINGS.register("none")
class NoWhitening(WhiteningStage):
    """No whitening: the pooled vector is the descriptor."""
    learns = False
    fitted = True
    transform = None

    def apply(self, v: np.ndarray) -> np.ndarray:
        return v

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        pass


@WHITENINGS.register("pca")
class LearnedPCAWhitening(PCAWhitening, WhiteningStage):
    """PCA-whitening to `dim` dimensions (0: all), learned on at most `max_vectors` training vectors, then L2."""
    learns = True

    def __init__(self, *, dim: Annotated[int, Range(ge=0)] = 0, max_vectors: Annotated[int, Range(ge=2)] = 200_000):
        super().__init__(dim or None)
        self.max_vectors = max_vectors

    @property
    def fitted(self) -> bool:
        return self.projection_ is not None

    def fit(self, x: np.ndarray, rng: np.random.Generator | None = None) -> "LearnedPCAWhitening":
        """Learn from (N, D) vectors, a random `max_vectors` of them when there are more (drawn from `rng`)."""
        if len(x) > self.max_vectors:
            x = x[(rng or np.random.default_rng(0)).choice(len(x), self.max_vectors, replace=False)]
        super().fit(x)
        if self.dim and self.dim_ < self.dim:
            log.warning("PCA-whitening kept %d of the %d dimensions asked for: %d training vectors span only that many",
                        self.dim_, self.dim, len(x))
        return self

    def fit_extractor(self, extractor, images, rng: np.random.Generator, progress) -> "LearnedPCAWhitening":
        """Learn from what `extractor`'s pooling gives the training images (image vectors, or region vectors for R-MAC)."""
        vectors = []
        for im in progress(images, desc="vectors for whitening"):
            views, regions_of = extractor.views_and_regions(im)
            vectors.append(extractor.pooling.whitening_inputs(views, regions_of))
        return self.fit(np.concatenate(vectors), rng)

    def apply(self, v: np.ndarray) -> np.ndarray:
        return l2n(self.transform(v))

    def as_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """The whitening as a shift and a fully connected layer, y = W (x - shift) (Gordo et al. sec. 3.1):
        (shift (D,), W (dim_, D)) float32, the initial "PCA" layer of a trained R-MAC network."""
        if self.projection_ is None:
            raise RuntimeError("PCA-whitening must be fitted before it becomes a layer")
        return self.mean_.astype(np.float32), np.ascontiguousarray(self.projection_.T, dtype=np.float32)

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "projection" in state:
            self.mean_ = np.asarray(state["mean"], dtype=np.float64)
            self.projection_ = np.asarray(state["projection"], dtype=np.float64)
            self.eigenvalues_ = np.asarray(state["eigenvalues"], dtype=np.float64)
