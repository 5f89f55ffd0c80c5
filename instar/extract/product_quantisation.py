"""Compact regions: region descriptors stored product-quantised instead of float32 (`coding.method = "pq"` / `"opq"`).

A region descriptor x (Dr,) is split into `m` sub-vectors of Dr/m dimensions and each is replaced by the index of
its nearest centroid among 2^nbits learned for that sub-space (Jégou et al., Product quantization for nearest
neighbor search, TPAMI 2011, sec. 2): m bytes per region instead of 4 Dr (1280-D: 5,120 B -> m B). `opq` first
rotates x by an orthogonal R learned so that the sub-spaces quantise better (Ge et al., Optimized Product
Quantization, CVPR 2013); inner products are unchanged by R, so the query is rotated the same way.

The region-scoring stages (CA-SR, regional search) score the codes by asymmetric distance computation (ADC,
Jégou et al. sec. 3.1): the float query descriptor q against each decoded region,

    <q, x^> = sum_j <q_j, c_j[code_j]>,

i.e. one (m, 2^nbits) table of sub-vector inner products per query and m lookups per region (`table`, `scores`).
Centroids (and R) are learned with faiss on the `region_pooling` descriptors of the training images and stored
with the index like the whitening (`state()`); the codes go to the ragged uint8 column `region_pq` (m per region, in
the order of `boxes`), and the float `regions` column is not stored.
"""
from __future__ import annotations

import logging
from typing import Annotated, Sequence

import faiss
import numpy as np

from ..core.protocols import CodingStage
from ..core.registry import CODINGS, Range
from ..store.columns import REGION_PQ

log = logging.getLogger(__name__)


@CODINGS.register("pq")
class RegionPQ(CodingStage):
    """Region descriptors product-quantised into m bytes (2^nbits centroids each), scored by ADC (Jégou et al., TPAMI 2011, sec. 2 and 3.1)."""
    learns = True
    keep_float_regions = False
    scores_regions = True
    name = "pq"

    def __init__(self, *, m: Annotated[int, Range(ge=1, le=4096)] = 128, nbits: Annotated[int, Range(ge=1, le=8)] = 8,
                 max_vectors: Annotated[int, Range(ge=2)] = 100_000, seed: Annotated[int, Range(ge=0)] = 0):
        # every code is stored in one byte per sub-quantiser whatever nbits (2^nbits centroids per sub-space)
        self.m, self.nbits, self.max_vectors, self.seed = int(m), int(nbits), int(max_vectors), int(seed)
        self.centroids: np.ndarray | None = None  # (m, 2^nbits, Dr/m) float32
        self.rotation: np.ndarray | None = None   # (Dr, Dr) float32, opq only: x -> x @ rotation.T

    @property
    def fitted(self) -> bool:
        return self.centroids is not None

    @property
    def dim(self) -> int:
        """Dr, the dimension of the region descriptors it codes (0 before fitting)."""
        return 0 if self.centroids is None else int(self.m * self.centroids.shape[2])

    # --- learning ------------------------------------------------------------------------------
    def check_dim(self, d: int) -> None:
        if d % self.m:
            divisors = [k for k in (8, 16, 32, 64, 128, 256, 512) if d % k == 0]
            raise ValueError(f"coding.m = {self.m}: must divide the region descriptors' dimension {d} "
                             f"(e.g. {', '.join(map(str, divisors)) or 1})")

    def fit(self, x: np.ndarray, rng: np.random.Generator | None = None) -> "RegionPQ":
        """Learn the sub-quantisers (and opq's rotation) from (N, Dr) training region descriptors, N >= 2^nbits."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or not np.all(np.isfinite(x)):
            raise ValueError(f"coding.method {self.name!r} needs finite (N, Dr) training vectors, got shape {x.shape}")
        self.check_dim(x.shape[1])
        if len(x) < 2 ** self.nbits:
            raise ValueError(f"coding.method {self.name!r} learns 2^nbits = {2 ** self.nbits} centroids per sub-space "
                             f"from the training images' region descriptors, but they gave only {len(x)}: use more "
                             "training images or a smaller coding.nbits")
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        if len(x) > self.max_vectors:
            x = x[np.sort(rng.choice(len(x), self.max_vectors, replace=False))]
        self.rotation = self.learn_rotation(x)
        if self.rotation is not None:
            x = np.ascontiguousarray(x @ self.rotation.T)
        pq = faiss.ProductQuantizer(x.shape[1], self.m, self.nbits)
        pq.cp.seed = self.seed
        pq.train(x)
        self.centroids = faiss.vector_to_array(pq.centroids).reshape(self.m, 2 ** self.nbits, -1).astype(np.float32)
        return self

    def learn_rotation(self, x: np.ndarray) -> np.ndarray | None:
        return None

    def fit_extractor(self, extractor, images: Sequence, rng: np.random.Generator, progress) -> "RegionPQ":
        """Learn from the region descriptors `extractor` gives the training images (at most max_vectors, drawn
        evenly over the images so that memory stays bounded)."""
        if not extractor.stores_regions:
            raise ValueError(f"coding.method {self.name!r} codes region descriptors: set region_pooling.method")
        per_image = max(1, -(-self.max_vectors // max(len(images), 1)))
        vectors = []
        for im in progress(images, desc=f"region features for {self.name}"):
            views, regions_of = extractor.views_and_regions(im)
            r = extractor.region_pooling(views, regions_of(views[0]))
            vectors.append(r[np.sort(rng.choice(len(r), per_image, replace=False))] if len(r) > per_image else r)
        x = np.concatenate(vectors)
        log.info("%s: learning %d sub-quantisers from %d region descriptors of %d images", self.name, self.m, len(x),
                 len(images))
        return self.fit(x, rng)

    # --- coding and scoring --------------------------------------------------------------------
    def rotate(self, x: np.ndarray) -> np.ndarray:
        """(n, Dr) float32 -> the same in the quantised basis (opq's rotation; pq: unchanged)."""
        if self.centroids is None:
            raise RuntimeError(f"coding.method {self.name!r} used before it was fitted")
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.dim:
            raise ValueError(f"coding.method {self.name!r} codes {self.dim}-dimensional vectors, got shape {x.shape}")
        return x if self.rotation is None else x @ self.rotation.T

    def codes(self, x: np.ndarray) -> np.ndarray:
        """(n, Dr) float32 -> (n, m) uint8: the nearest centroid of each sub-vector (faiss, exact L2)."""
        y = np.ascontiguousarray(self.rotate(x).reshape(len(x), self.m, -1).transpose(1, 0, 2))
        out = np.empty((len(x), self.m), np.uint8)
        for j in range(self.m):
            out[:, j] = faiss.knn(np.ascontiguousarray(y[j]), self.centroids[j], 1)[1][:, 0]
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, m) uint8 -> (n, Dr) float32 reconstructions, in the original basis."""
        codes = np.asarray(codes, dtype=np.int64)
        y = self.centroids[np.arange(self.m), codes].reshape(len(codes), -1)
        return y if self.rotation is None else y @ self.rotation

    def table(self, q: np.ndarray) -> np.ndarray:
        """ADC table of a query (Dr,): (m, 2^nbits) float32, entry [j, k] = <q_j, c_j[k]> (Jégou et al. sec. 3.1)."""
        qs = self.rotate(np.asarray(q, np.float32)[None])[0].reshape(self.m, -1)
        return np.einsum("jd,jkd->jk", qs, self.centroids).astype(np.float32)

    def scores(self, table: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Inner products of the table's query with (n, m) uint8 coded regions: (n,) float32 = sum_j table[j, code_j]."""
        flat = np.arange(self.m, dtype=np.int64) * table.shape[1]
        return table.ravel()[np.asarray(codes, np.int64) + flat].sum(axis=1, dtype=np.float32)

    def columns(self):
        from ..store import Column
        return [Column(REGION_PQ, "uint8", (self.m,), ragged=True)]

    def encode(self, extractor, views, regions_of, description) -> dict[str, np.ndarray]:
        regions = description.regions
        if regions is None or not len(regions):
            return {REGION_PQ: np.zeros((0, self.m), np.uint8)}
        return {REGION_PQ: self.codes(regions)}

    def state(self) -> dict[str, np.ndarray]:
        out = {"centroids": self.centroids}
        if self.rotation is not None:
            out["rotation"] = self.rotation
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        centroids = np.asarray(state["centroids"], dtype=np.float32)
        if centroids.ndim != 3 or centroids.shape[:2] != (self.m, 2 ** self.nbits):
            raise ValueError(f"coding.method {self.name!r}: stored centroids {centroids.shape} are not "
                             f"({self.m}, {2 ** self.nbits}, Dr/m)")
        rotation = state.get("rotation")
        if (rotation is None) != (self.name == "pq"):
            raise ValueError(f"coding.method {self.name!r}: the stored model {'lacks' if rotation is None else 'has'} "
                             "an OPQ rotation")
        self.centroids = centroids
        self.rotation = None if rotation is None else np.asarray(rotation, dtype=np.float32)


@CODINGS.register("opq")
class RegionOPQ(RegionPQ):
    """Region descriptors rotated by a learned orthogonal R, then product-quantised into m bytes (Ge et al., CVPR 2013)."""
    name = "opq"

    def __init__(self, *, m: Annotated[int, Range(ge=1, le=4096)] = 128, nbits: Annotated[int, Range(ge=1, le=8)] = 8,
                 iterations: Annotated[int, Range(ge=1)] = 20, max_vectors: Annotated[int, Range(ge=2)] = 100_000,
                 seed: Annotated[int, Range(ge=0)] = 0):
        super().__init__(m=m, nbits=nbits, max_vectors=max_vectors, seed=seed)
        self.iterations = int(iterations)

    def learn_rotation(self, x: np.ndarray) -> np.ndarray:
        """(Dr, Dr) float32 orthogonal R (faiss's OPQMatrix, non-parametric OPQ, Ge et al. sec. 3.1)."""
        need = max(256, x.shape[1])  # faiss learns R with 8-bit sub-quantisers, and crashes on fewer points than Dr
        if len(x) < need:
            raise ValueError(f"coding.method 'opq' learns its {x.shape[1]}-D rotation from at least {need} region "
                             f"descriptors, but the training images gave only {len(x)}: use more training images")
        opq = faiss.OPQMatrix(x.shape[1], self.m)
        opq.niter = self.iterations
        opq.niter_pq = 4  # PQ k-means iterations inside each rotation update (faiss's default for later rounds)
        opq.verbose = False
        opq.train(x)
        return faiss.vector_to_array(opq.A).reshape(x.shape[1], x.shape[1]).astype(np.float32)
