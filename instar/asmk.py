"""Aggregated match kernels over local features (Detect-to-Retrieve sec. 4; Tolias et al.'s ASMK): the math.

An image X is a set of local descriptors, each quantised to its nearest visual word c of a k-means codebook
(single assignment, as Detect-to-Retrieve adopts). Per word, V(X_c) = sum of the residuals x - q(x). Eq. (1):

    K(X, Y) = gamma(X) gamma(Y) sum_c sigma(Phi(X_c)^T Phi(Y_c)),   gamma(X) = (sum_c sigma(Phi(X_c)^T Phi(X_c)))^-1/2

- VLAD: sigma(u) = u, Phi = V (gamma = 1 / ||V(X)||, the L2 norm over all words);
- ASMK: sigma(u) = sign(u)|u|^alpha if u > tau else 0 (eq. 2; alpha = 3, tau = 0), Phi = V / ||V|| per word,
  so gamma(X) = 1 / sqrt(number of words X uses);
- ASMK*: Phi binarised (b(x) = +1 if x > 0 else -1, stored as packed bits), Phi^T Phi' / D = 1 - 2 h / D with h
  the Hamming distance; then sigma as for ASMK.

Regional variants of a database image Y with regions r = 1..R (region 1 = the whole image, always counted):

- separate (D2R regional search, eq. 3-4): every region aggregated and stored on its own; an image scores the max
  (eq. 3) or the mean (eq. 4) of its regions' kernels;
- regions: R-VLAD (eq. 6-8) for the VLAD kernel, V_R(Y_c) = 1/R sum_r gamma_VLAD(Y^r) V(Y^r_c);
  R-ASMK (eq. 9) for the ASMK kernel, the same V_R normalised per word (R-ASMK* its binarised version), scored
  with eq. (1)'s normalisation as ASMK is (as DELF's implementation does);
- naive (Naive-R-ASMK, sec. 4.3): 1/R sum_r gamma_ASMK(Y^r) V^(Y^r_c) kept unnormalised, compared with the
  query's V^(X_c) through sigma (gamma(X) applied, none for Y: it is inside the average).

All of them are one `Aggregated` representation: entries (word, item, vector or packed bits) and one factor per
item (gamma for ASMK-type kernels; 1 where it is already folded into the vectors). An item is the image, or one
region for `separate`. Queries are aggregated as whole images (the asymmetric case of sec. 4.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KERNELS = ("vlad", "asmk")
AGGREGATIONS = ("image", "separate", "regions", "naive")

EPS = 1e-12


def selectivity(u: np.ndarray, alpha: float = 3.0, tau: float = 0.0) -> np.ndarray:
    """ASMK's sigma (eq. 2): sign(u)|u|^alpha where u > tau, else 0."""
    u = np.asarray(u, dtype=np.float32)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** np.float32(alpha), np.float32(0)).astype(np.float32)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """Binarise (N, D) vectors (b(x) = +1 if x > 0 else -1) into (N, ceil(D/8)) uint8 packed bits (1 = positive)."""
    return np.packbits(np.asarray(x) > 0, axis=-1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of packed bit arrays (N, B) and (N, B) (or broadcastable) -> (N,) int."""
    x = np.bitwise_xor(a, b)
    if x.shape[-1] % 8 == 0 and x.flags.c_contiguous:
        x = x.view(np.uint64)
    return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)


def binary_similarity(a: np.ndarray, b: np.ndarray, dim: int) -> np.ndarray:
    """Normalised inner product of binarised (+-1) vectors of `dim` bits: 1 - 2 h / dim."""
    return (1.0 - 2.0 * hamming(a, b) / dim).astype(np.float32)


@dataclass
class Aggregated:
    """One image's aggregated representation: entries sorted by (item, word) -- `words` (E,) int32, `items` (E,)
    int32 (0 unless regions are stored separately), `data` (E, D) float32 or (E, ceil(D/8)) uint8 packed signs --
    and `gamma` (I,) float32, the factor each item's kernel is multiplied by. `dim` is D."""
    words: np.ndarray
    items: np.ndarray
    data: np.ndarray
    gamma: np.ndarray
    dim: int

    @property
    def binary(self) -> bool:
        return self.data.dtype == np.uint8

    def __len__(self) -> int:
        return len(self.words)

    def item(self, i: int) -> "Aggregated":
        keep = self.items == i
        return Aggregated(self.words[keep], np.zeros(int(keep.sum()), np.int32), self.data[keep], self.gamma[i:i + 1], self.dim)


def region_members(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(R, N) bool: which of the (N, 2+) points [x, y, ...] lie in each of the (R, 4) [x0, y0, x1, y1) boxes."""
    p = np.asarray(points, dtype=np.float32).reshape(-1, np.shape(points)[-1] if np.ndim(points) == 2 else 2)
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x, y = p[None, :, 0], p[None, :, 1]
    return (x >= b[:, 0:1]) & (x < b[:, 2:3]) & (y >= b[:, 1:2]) & (y < b[:, 3:4])


def with_whole_image(boxes: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """Region boxes with the whole image first (added if missing, never twice): (R, 4) float32."""
    W, H = size
    whole = np.array([[0, 0, W, H]], np.float32)
    if boxes is None or len(boxes) == 0:
        return whole
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    covers = (b[:, 0] <= 0) & (b[:, 1] <= 0) & (b[:, 2] >= W) & (b[:, 3] >= H)
    return np.concatenate([whole, b[~covers]])


def _region_word_sums(residuals: np.ndarray, words: np.ndarray, members: np.ndarray, k: int):
    """Per (region, word) sums of residuals. Returns region ids (U,), word ids (U,), sums (U, D) float64, sorted
    by (region, word)."""
    r_idx, x_idx = np.nonzero(members)
    key = r_idx.astype(np.int64) * k + words[x_idx]
    order = np.argsort(key, kind="stable")
    key, x_idx = key[order], x_idx[order]
    if len(key) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, residuals.shape[1]))
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    sums = np.add.reduceat(residuals[x_idx].astype(np.float64), starts, axis=0)
    ukey = key[starts]
    return ukey // k, ukey % k, sums


def _per_region(values: np.ndarray, regions: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(regions, weights=values, minlength=n)


def aggregate(descriptors: np.ndarray, words: np.ndarray, centroids: np.ndarray, *, kernel: str = "asmk",
              binary: bool = True, aggregation: str = "image", members: np.ndarray | None = None) -> Aggregated:
    """Aggregate one image's local `descriptors` (N, D) assigned to `words` (N,) of `centroids` (K, D).

    `members` (R, N) bool says which features each region holds (row 0 the whole image); None: the whole image
    only. See the module docstring for what each `kernel` x `aggregation` stores.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")
    if binary and (kernel == "vlad" or aggregation == "naive"):
        raise ValueError(f"binarisation applies to the normalised ASMK kernels, not to "
                         f"{'VLAD' if kernel == 'vlad' else 'Naive-R-ASMK'}")
    descriptors = np.asarray(descriptors, dtype=np.float32)
    words = np.asarray(words, dtype=np.int64)
    K, D = centroids.shape
    if descriptors.ndim != 2 or descriptors.shape[1] != D or len(words) != len(descriptors):
        raise ValueError(f"{descriptors.shape} descriptors with {len(words)} words do not fit a {K}x{D} codebook")
    n = len(descriptors)
    if members is None or aggregation == "image":
        members = np.ones((1, n), dtype=bool)
    R = members.shape[0]
    residuals = descriptors - centroids[words]
    reg, wrd, sums = _region_word_sums(residuals, words, members, K)
    sq = (sums * sums).sum(axis=1)
    keep = sq > EPS  # a word whose residuals cancel exactly carries nothing (and cannot be normalised)
    reg, wrd, sums, sq = reg[keep], wrd[keep], sums[keep], sq[keep]
    norms = np.sqrt(sq)
    per_region_words = np.bincount(reg, minlength=R).astype(np.float64)
    vlad_gamma = 1.0 / np.sqrt(np.maximum(_per_region(sq, reg, R), EPS))        # gamma_VLAD(Y^r) = 1/||V(Y^r)||
    asmk_gamma = 1.0 / np.sqrt(np.maximum(per_region_words, 1.0))               # gamma_ASMK(Y^r) = 1/sqrt(#words)

    def pack(items, wrds, vecs, gamma):
        if binary:
            data = pack_signs(vecs)
        else:
            data = vecs.astype(np.float32)
        return Aggregated(wrds.astype(np.int32), items.astype(np.int32), np.ascontiguousarray(data),
                          np.asarray(gamma, np.float32).reshape(-1), D)

    if aggregation in ("image", "separate"):
        if kernel == "vlad":
            return pack(reg, wrd, sums * vlad_gamma[reg, None], np.ones(R))
        return pack(reg, wrd, sums / norms[:, None], asmk_gamma)
    # regional aggregation into one representation: sum over regions per word
    if aggregation == "naive":
        contrib = sums / norms[:, None] * asmk_gamma[reg, None] / R
    else:
        contrib = sums * vlad_gamma[reg, None] / R
    uw, inv = np.unique(wrd, return_inverse=True)
    agg = np.zeros((len(uw), D))
    np.add.at(agg, inv, contrib)
    zeros = np.zeros(len(uw), np.int64)
    if kernel == "vlad" or aggregation == "naive":
        return pack(zeros, uw, agg, np.ones(1))
    nrm = np.linalg.norm(agg, axis=1)
    ok = nrm > np.sqrt(EPS)
    return pack(zeros[ok], uw[ok], agg[ok] / nrm[ok, None], [1.0 / np.sqrt(max(int(ok.sum()), 1))])


def entry_similarities(q: np.ndarray, d: np.ndarray, dim: int, binary: bool) -> np.ndarray:
    """Phi(X_c)^T Phi(Y_c) for matched rows of query entries `q` and database entries `d` (same word)."""
    if binary:
        return binary_similarity(q, d, dim)
    return np.einsum("ij,ij->i", q.astype(np.float32), d.astype(np.float32))


def match_sigma(u: np.ndarray, kernel: str, alpha: float, tau: float) -> np.ndarray:
    return u.astype(np.float32) if kernel == "vlad" else selectivity(u, alpha, tau)


def kernel_value(query: Aggregated, db: Aggregated, *, kernel: str = "asmk", alpha: float = 3.0,
                 tau: float = 0.0) -> np.ndarray:
    """The kernel of `query` (one item) with every item of `db`, computed word by word: (I,) float32.
    The direct evaluation the inverted file must agree with."""
    out = np.zeros(len(db.gamma), np.float32)
    qw = {int(w): i for i, w in enumerate(query.words)}
    for e in range(len(db)):
        i = qw.get(int(db.words[e]))
        if i is None:
            continue
        u = entry_similarities(query.data[i:i + 1], db.data[e:e + 1], db.dim, db.binary)
        out[db.items[e]] += match_sigma(u, kernel, alpha, tau)[0]
    return out * db.gamma * query.gamma[0]


# ------------------------------------------------------------------------------------------ stage entries
# (imported below the math: the entries need the registries and the store's column declarations)
from . import inverted_file as ivf_mod  # noqa: E402
from .codebook import Codebook  # noqa: E402
from .registry import FILTERS, POOLINGS  # noqa: E402
from .search import Database, Query, Ranking  # noqa: E402
from .store import Column  # noqa: E402
from .whitening import l2n  # noqa: E402

BOXES = "asmk_boxes"
LOCAL_WORDS, LOCAL_XY, LOCAL_CODES = "local_words", "local_xy", "local_codes"


@POOLINGS.register("asmk", choices={"kernel": KERNELS, "aggregation": AGGREGATIONS})
class ASMKPooling:
    """Aggregated match kernel over a k-means codebook: VLAD / ASMK / ASMK* (binary), per image or over the regions (separate = D2R regional search; regions = R-VLAD / R-ASMK(*); naive = Naive-R-ASMK)."""
    input_kind = "local"
    needs_regions = False
    whitens_regions = False
    learns = True

    def __init__(self, *, k: int = 1024, kernel: str = "asmk", binary: bool = True, aggregation: str = "image",
                 points: bool = False, global_bins: int = 256, niter: int = 10, seed: int = 0,
                 max_descriptors: int = 200_000):
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
        per_image = max(1, self.max_descriptors // max(len(images), 1))
        chunks = []
        for im in progress(images, desc="local features for the codebook"):
            d = extractor.features(im).descriptors
            if len(d) > per_image:
                d = d[rng.choice(len(d), per_image, replace=False)]
            chunks.append(d)
        self.codebook = Codebook(self.k, self.niter, self.seed).fit(np.concatenate(chunks))
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
        cols = [Column(ivf_mod.WORDS, "int32", (), ragged=True),
                Column(ivf_mod.CODES, "uint8", (None,), ragged=True) if self.binary
                else Column(ivf_mod.VECTORS, "float32", (None,), ragged=True),
                Column(ivf_mod.GAMMA, "float32", (), ragged=True)]
        if self.separate:
            cols += [Column(ivf_mod.ITEM, "uint16", (), ragged=True), Column(BOXES, "float32", (4,), ragged=True)]
        if self.points:
            cols += [Column(LOCAL_WORDS, "int32", (), ragged=True), Column(LOCAL_XY, "float32", (2,), ragged=True),
                     Column(LOCAL_CODES, "uint8", (None,), ragged=True)]
        return cols

    @property
    def pixel_columns(self) -> tuple[str, ...]:
        return ((BOXES,) if self.separate else ()) + ((LOCAL_XY,) if self.points else ())

    def encode(self, extractor, local, regions_of, description) -> dict[str, np.ndarray]:
        members, boxes = self._members(local, regions_of, description.size)
        if members is not None and members.shape[0] > np.iinfo(np.uint16).max:
            raise ValueError(f"{members.shape[0]} regions in one image: at most {np.iinfo(np.uint16).max} are stored")
        words = self.words_of(local)
        agg = aggregate(local.descriptors, words, self.codebook.centroids, kernel=self.kernel, binary=self.binary,
                        aggregation=self.aggregation, members=members)
        out = {ivf_mod.WORDS: agg.words, (ivf_mod.CODES if self.binary else ivf_mod.VECTORS): agg.data,
               ivf_mod.GAMMA: agg.gamma}
        if self.separate:
            out[ivf_mod.ITEM] = agg.items.astype(np.uint16)
            out[BOXES] = boxes.astype(np.float32)
        if self.points:
            out[LOCAL_WORDS] = words.astype(np.int32)
            out[LOCAL_XY] = np.ascontiguousarray(local.points[:, :2], dtype=np.float32)
            out[LOCAL_CODES] = pack_signs(local.descriptors - self.codebook.centroids[words])
        return out


def asmk_stage(query: Query, who: str) -> ASMKPooling:
    extractor = query.extractor
    if extractor is None or query.image is None:
        raise ValueError(f"{who} needs the query image (its local features), not only a ready descriptor")
    stage = extractor.pooling
    if not isinstance(stage, ASMKPooling):
        raise ValueError(f"{who} needs an index whose pooling.method is 'asmk'")
    return stage


def query_aggregated(query: Query, stage: ASMKPooling) -> Aggregated:
    return query.memo(("asmk", id(stage)), lambda: stage.query_representation(query.features))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(int(k), len(scores))
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.argsort(-scores[part], kind="stable")]
    return np.argsort(-scores, kind="stable")


@FILTERS.register("asmk", choices={"pooling": ("max", "mean")})
class ASMKSearch:
    """Aggregated match kernel search (eq. 1) through the inverted file; with regions stored separately an image scores the max (eq. 3) or mean (eq. 4) of its regions."""

    def __init__(self, *, alpha: float = 3.0, tau: float = 0.0, pooling: str = "max"):
        if alpha <= 0:
            raise ValueError(f"filter.alpha = {alpha}: the selectivity exponent must be positive")
        self.alpha, self.tau, self.pooling = alpha, tau, pooling

    @staticmethod
    def requires(sections) -> str | None:
        if sections["pooling"]["method"] != "asmk":
            return "filter.method 'asmk' searches aggregated local features: set pooling.method = 'asmk'"
        return None

    def item_scores(self, db: Database, query: Query) -> tuple[np.ndarray, np.ndarray, ASMKPooling]:
        """Every stored item's kernel with the query, and each item's database position (-1: not in `db`: a
        removed image, or one committed after `db`'s snapshot)."""
        stage = asmk_stage(query, "filter.method = 'asmk'")
        if db.snapshot is None:
            raise ValueError("filter.method = 'asmk' searches an index's inverted file: build the Database from an index")
        ivf = ivf_mod.for_snapshot(db.snapshot, stage.k, separate=stage.separate)
        scores = ivf.scores(query_aggregated(query, stage), kernel=stage.kernel, alpha=self.alpha, tau=self.tau)
        position_of_row = np.full(ivf.n_rows + 1, -1, np.int64)
        position_of_row[db.rows] = np.arange(len(db))
        rows = np.where(ivf.item_row < 0, ivf.n_rows, ivf.item_row)
        return scores, position_of_row[rows], stage

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        scores, pos, stage = self.item_scores(db, query)
        how = self.pooling if stage.separate else "single"
        image, best = reduce_items(scores, pos, len(db), how)
        order = _top(image, k)
        if how != "max":
            return Ranking(order.astype(np.int64), image[order])
        boxes = np.full((len(order), 4), np.nan, np.float32)
        chosen = best[order]
        have = chosen >= 0
        if have.any():  # the boxes column holds one box per item, appended in step with the gamma column
            boxes[have] = np.asarray(db.snapshot.column(BOXES)[chosen[have]])
        return Ranking(order.astype(np.int64), image[order], boxes)


def reduce_items(scores: np.ndarray, pos: np.ndarray, n: int, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (n,) float32 from item scores, `pos` (I,) the image of each item (-1: none): `single` (one item
    per image), `max` (eq. 3; also the best item of each image, else -1) or `mean` over the image's items (eq. 4)."""
    ok = np.flatnonzero(pos >= 0)
    best = np.full(n, -1, np.int64)
    if how == "single":
        image = np.zeros(n, np.float32)
        image[pos[ok]] = scores[ok]
        best[pos[ok]] = ok
        return image, best
    if how == "mean":
        image = (np.bincount(pos[ok], weights=scores[ok], minlength=n)
                 / np.maximum(np.bincount(pos[ok], minlength=n), 1)).astype(np.float32)
        return image, best
    if how != "max":
        raise ValueError(f"regional pooling {how!r}: expected max or mean")
    by = np.lexsort((-scores[ok], pos[ok]))
    items = ok[by]
    first = items[np.concatenate([[True], pos[items][1:] != pos[items][:-1]])] if len(items) else items
    image = np.zeros(n, np.float32)
    image[pos[first]] = scores[first]
    best[pos[first]] = first
    return image, best
