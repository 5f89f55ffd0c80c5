"""ASMK pooling (`pooling.method = "asmk"`): a codebook learned on local features, and per image the aggregated
match kernel's entries (VLAD / ASMK / ASMK*, per image or over regions) stored for the inverted file."""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...asmk.kernel import AGGREGATIONS, KERNELS, Aggregated, aggregate, region_members, with_whole_image
from ...core.binary import pack_signs
from ...core.codebook import Codebook, sample_descriptors
from ...core.norms import l2n
from ...core.protocols import PoolingStage
from ...core.registry import POOLINGS, Range
from ...store import Column
from ...store.columns import (ASMK_BOXES, ASMK_CODES, ASMK_GAMMA, ASMK_ITEM, ASMK_VECTORS, ASMK_WORDS, LOCAL_CODES,
                              LOCAL_WORDS, LOCAL_XY)


@POOLINGS.register("asmk", choices={"kernel": KERNELS, "aggregation": AGGREGATIONS})
class ASMKPooling(PoolingStage):
    """Aggregated match kernel over a k-means codebook: VLAD / ASMK / ASMK* (binary), per image or over the regions (separate = D2R regional search; regions = R-VLAD / R-ASMK(*); naive = Naive-R-ASMK)."""
    input_kind = "local"
    learns = True

    def __init__(self, *, k: Annotated[int, Range(ge=2, le=1 << 20)] = 1024, kernel: str = "asmk", binary: bool = True, aggregation: str = "image",
                 points: bool = False, global_bins: Annotated[int, Range(ge=1)] = 256, niter: Annotated[int, Range(ge=1)] = 10, seed: Annotated[int, Range(ge=0)] = 0,
                 max_descriptors: Annotated[int, Range(ge=2)] = 200_000):
        if not 2 <= k <= 1 << 20:
            raise ValueError(f"pooling.k = {k}: a codebook of 2 to {1 << 20} visual words")
        if kernel == "vlad" and binary:
            raise ValueError("pooling.binary = true binarises ASMK's normalised residuals: set pooling.kernel = 'asmk' "
                             "or pooling.binary = false")
        if global_bins < 1:
            raise ValueError(f"pooling.global_bins = {global_bins}: the global bag-of-words vector needs at least one bin")
        if aggregation == "naive" and (kernel != "asmk" or binary):
            raise ValueError("pooling.aggregation = 'naive' is Naive-R-ASMK: it needs pooling.kernel = 'asmk' and "
                             "pooling.binary = false")
        self.k, self.kernel, self.binary, self.aggregation = k, kernel, binary, aggregation
        self.points, self.global_bins = points, global_bins
        self.niter, self.seed, self.max_descriptors = niter, seed, max_descriptors
        self.codebook: Codebook | None = None

    @property
    def separate(self) -> bool:
        return self.aggregation == "separate"

    @property
    def fitted(self) -> bool:
        return self.codebook is not None

    # --- learning -------------------------------------------------------------------------------
    def fit_extractor(self, extractor, images, rng: np.random.Generator, progress) -> "ASMKPooling":
        """Learn the codebook (faiss k-means) from the training images' local features (the fitted features stage),
        at most `max_descriptors` drawn evenly from the images."""
        sample = sample_descriptors((extractor.features(im).descriptors
                                     for im in progress(images, desc="local features for the codebook")),
                                    len(images), rng, self.max_descriptors)
        self.codebook = Codebook(self.k, self.niter, self.seed).fit(sample)
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {"codebook.centroids": self.codebook.centroids} if self.codebook is not None else {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "codebook.centroids" in state:
            if state["codebook.centroids"].shape[0] != self.k:
                raise ValueError(f"stored codebook has {state['codebook.centroids'].shape[0]} words, pooling.k = {self.k}")
            self.codebook = Codebook.from_state({"centroids": state["codebook.centroids"]})

    # --- describing -----------------------------------------------------------------------------
    def words_of(self, local) -> np.ndarray:
        """Nearest visual word of each local feature (computed once per feature set)."""
        memo = local.__dict__.setdefault("_words", {})
        if id(self.codebook) not in memo:
            memo[id(self.codebook)] = self.codebook.assign(local.descriptors)
        return memo[id(self.codebook)]

    def __call__(self, local, regions=None, whiten=None) -> np.ndarray:
        """The image's global vector: its square-rooted bag-of-words histogram folded to `global_bins` bins (word
        id mod bins), L2-normalised -- cheap (1 KB at 256 bins, less than the ASMK* entries of an image), and
        meaningful for k-NN and query expansion, which search the global vectors."""
        bins = min(self.k, self.global_bins)
        h = np.bincount(self.words_of(local) % bins, minlength=bins).astype(np.float32)
        return l2n(np.sqrt(h))

    def whitening_inputs(self, local, regions) -> np.ndarray:
        return self(local)[None]

    def _members(self, local, regions_of, size):
        if self.aggregation == "image":
            return None, None
        regions = regions_of() if regions_of is not None else None
        boxes = with_whole_image(None if regions is None else regions.pixels, size)
        return region_members(local.points, boxes), boxes

    def aggregate(self, local, regions_of=None, size=None) -> Aggregated:
        """The stored representation of one image (its regions from `regions_of()`, the image `size` (W, H))."""
        members, _ = self._members(local, regions_of, size)
        return aggregate(local.descriptors, self.words_of(local), self.codebook.centroids, kernel=self.kernel,
                         binary=self.binary, aggregation=self.aggregation, members=members)

    def query_representation(self, local) -> Aggregated:
        """A query is aggregated as a whole image (the asymmetric case, sec. 4.3)."""
        return aggregate(local.descriptors, self.words_of(local), self.codebook.centroids, kernel=self.kernel,
                         binary=self.binary, aggregation="image")

    def columns(self) -> list[Column]:
        cols = [Column(ASMK_WORDS, "int32", (), ragged=True),
                Column(ASMK_CODES, "uint8", (None,), ragged=True) if self.binary
                else Column(ASMK_VECTORS, "float32", (None,), ragged=True),
                Column(ASMK_GAMMA, "float32", (), ragged=True)]
        if self.separate:
            cols += [Column(ASMK_ITEM, "uint16", (), ragged=True), Column(ASMK_BOXES, "float32", (4,), ragged=True)]
        if self.points:
            cols += [Column(LOCAL_WORDS, "int32", (), ragged=True), Column(LOCAL_XY, "float32", (2,), ragged=True),
                     Column(LOCAL_CODES, "uint8", (None,), ragged=True)]
        return cols

    @property
    def pixel_columns(self) -> tuple[str, ...]:
        return ((ASMK_BOXES,) if self.separate else ()) + ((LOCAL_XY,) if self.points else ())

    def encode(self, extractor, local, regions_of, description) -> dict[str, np.ndarray]:
        members, boxes = self._members(local, regions_of, description.size)
        if members is not None and members.shape[0] > np.iinfo(np.uint16).max:
            raise ValueError(f"{members.shape[0]} regions in one image: at most {np.iinfo(np.uint16).max} are stored")
        words = self.words_of(local)
        agg = aggregate(local.descriptors, words, self.codebook.centroids, kernel=self.kernel, binary=self.binary,
                        aggregation=self.aggregation, members=members)
        out = {ASMK_WORDS: agg.words, (ASMK_CODES if self.binary else ASMK_VECTORS): agg.data,
               ASMK_GAMMA: agg.gamma}
        if self.separate:
            out[ASMK_ITEM] = agg.items.astype(np.uint16)
            out[ASMK_BOXES] = boxes.astype(np.float32)
        if self.points:
            out[LOCAL_WORDS] = words.astype(np.int32)
            out[LOCAL_XY] = np.ascontiguousarray(local.points[:, :2], dtype=np.float32)
            out[LOCAL_CODES] = pack_signs(local.descriptors - self.codebook.centroids[words])
        return out
