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

from ..core.binary import binary_similarity, pack_signs

KERNELS = ("vlad", "asmk")
AGGREGATIONS = ("image", "separate", "regions", "naive")

EPS = 1e-12


def selectivity(u: np.ndarray, alpha: float = 3.0, tau: float = 0.0) -> np.ndarray:
    """ASMK's sigma (eq. 2): sign(u)|u|^alpha where u > tau, else 0."""
    u = np.asarray(u, dtype=np.float32)
    return np.where(u > tau, np.sign(u) * np.abs(u) ** np.float32(alpha), np.float32(0)).astype(np.float32)


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
