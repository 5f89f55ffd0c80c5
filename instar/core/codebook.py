"""Codebook stage: a k-means visual vocabulary over local descriptors (faiss), and nearest-word assignment."""
from __future__ import annotations

from typing import Iterable

import faiss
import numpy as np


class Codebook:
    """K visual words learned by k-means on (N, D) float32 descriptors; `assign` maps descriptors to word ids."""

    def __init__(self, k: int = 64, niter: int = 20, seed: int = 0):
        self.k = int(k)
        self.niter = int(niter)
        self.seed = int(seed)
        self.centroids: np.ndarray | None = None  # (K, D) float32

    def fit(self, descriptors: np.ndarray) -> "Codebook":
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] < self.k:
            raise ValueError(f"a codebook of {self.k} words needs at least {self.k} training descriptors, got {x.shape[0] if x.ndim == 2 else x.shape}")
        km = faiss.Kmeans(x.shape[1], self.k, niter=self.niter, seed=self.seed, verbose=False, max_points_per_centroid=1000)
        km.train(x)
        self.centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        return self

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Nearest word (L2) for each of (T, D) descriptors -> (T,) int64."""
        if self.centroids is None:
            raise RuntimeError("Codebook.assign called before fit")
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        _, idx = faiss.knn(x, self.centroids, 1)
        return idx[:, 0].astype(np.int64)

    def state(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "Codebook":
        cb = cls(k=state["centroids"].shape[0])
        cb.centroids = np.ascontiguousarray(state["centroids"], dtype=np.float32)
        return cb


def sample_descriptors(descriptor_sets: Iterable[np.ndarray], n_images: int, rng: np.random.Generator, total: int,
                       minimum: int = 1) -> np.ndarray:
    """Training descriptors for a codebook: from each image's (n_i, D) set at most max(minimum, total // n_images),
    drawn without replacement by `rng`; (M, D) concatenated."""
    per_image = max(minimum, total // max(n_images, 1))
    chunks = []
    for d in descriptor_sets:
        if len(d) > per_image:
            d = d[rng.choice(len(d), per_image, replace=False)]
        chunks.append(d)
    return np.concatenate(chunks)
