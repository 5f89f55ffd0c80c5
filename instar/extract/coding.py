"""Coding stage: binary codes of the global vector and of every region descriptor, packed 8 bits to a byte.

Entries of `CODINGS` (a preset's `coding.method`): `none`; `drh`, Deep Region Hashing's region hashing layer
(Song et al. sec. 3.1.3-3.1.4); and the baselines `pca-sign`, `itq` and `lsh`. Every coding here is linear
followed by a threshold, bit = 1[x . w_k + b_k >= 0] for k = 1..bits, so a learned coding is a (D, bits)
`weights` matrix and a (bits,) `bias`, learned on the RoI features of a separate training set (the
`region_pooling` stage's region descriptors, as DRH trains its hashing layer on region features) and stored with
the index like the whitening (`state()`).

An index of a coding preset stores two more columns (`columns()` / `encode()`): `codes`, one (bits/8,) uint8 code
per image (the global vector's), and `region_codes`, ragged, one code per stored region in the order of the
`boxes` / `regions` columns. Bits are packed with `np.packbits` (bit k is bit 7 - k % 8 of byte k // 8); Hamming
distances do not depend on the order as long as every code uses the same one.

DRH's objective as printed (eq. 1-3) for a code h = sigma(Wx + b), y = 1[h >= 0.5]:

    l = 1/2 ||y - h||^2 - alpha/2 tr(h h^T) + beta/2 ||W||^2 + eta/2 ||b||^2,    alpha = 100, beta = eta = 0.001

tr(h h^T) = ||h||^2 for a code vector, so with alpha = 100 the second term drives every sigmoid to 1: the codes
collapse to all ones (`objective = "paper"`, kept selectable; the figures are in the README). The smallest fix
that works (`objective = "balanced"`) centres the trace term on the batch -- alpha/2 tr(H~^T H~)/N with
H~ = H - mean(H), i.e. it maximises each bit's variance over the training regions, which for a bit in [0, 1] is
largest when it is balanced (the survey's bit balance, sec. 4.2.4) -- and adds the survey's bit decorrelation,
gamma/4 ||offdiag(H~^T H~ / N)||^2 / bits, so that the bits do not all follow the same high-variance direction,
and the orthogonality term rho/4 ||W W^T - I||^2 of the objective eq. (1)-(3) derives from (Liong et al., Deep
Hashing, CVPR 2015, which DRH's eq. 1 follows otherwise): it keeps the hash directions apart and their norms near 1,
so the variance term spreads the bits over the principal subspace instead of saturating them along a few
directions (without it, 1024-bit codes of mini-rparis6k scored 77.7 / 24.7 medium mAP, with it 81.5: README).
"""
from __future__ import annotations

import logging
from typing import Annotated, Sequence

import numpy as np
import torch

from ..core.binary import pack
from ..core.pca import principal_axes
from ..core.protocols import CodingStage
from ..core.registry import CODINGS, Range
from ..store.columns import CODES, REGION_CODES

log = logging.getLogger(__name__)

def check_bits(bits: int, who: str) -> int:
    if isinstance(bits, bool) or int(bits) != bits or bits < 8 or bits % 8:
        raise ValueError(f"coding.bits = {bits!r} ({who}): must be a positive multiple of 8 (e.g. 128 ... 4096)")
    return int(bits)


@CODINGS.register("none")
class NoCoding(CodingStage):
    """No binary codes: the index keeps float descriptors only."""
    learns = False
    fitted = True
    bits = 0
    keep_float_regions = True


class LinearCoding(CodingStage):
    """Base of the codings: bit k = 1[x . weights[:, k] + bias[k] >= 0]; subclasses learn `weights` and `bias`
    from (N, D) training vectors in `learn`. Stage protocol: see `instar.extract.extractor.Extractor` and `instar.core.protocols`."""
    learns = True
    binary = True
    name = "coding"

    def __init__(self, bits: int, max_vectors: int, seed: int, keep_float_regions: bool = True):
        self.bits = check_bits(bits, self.name)
        if not isinstance(keep_float_regions, bool):
            raise ValueError(f"coding.keep_float_regions = {keep_float_regions!r}: must be true or false")
        # false: an index keeps only the region codes and boxes, not the float region descriptors they were coded
        # from (DRH's point: 128 B instead of 5 KB per region); float region stages (CA-SR, regional) then refuse it
        self.keep_float_regions = keep_float_regions
        if max_vectors < 2:
            raise ValueError(f"coding.max_vectors = {max_vectors}: must be at least 2")
        self.max_vectors, self.seed = int(max_vectors), int(seed)
        self.weights: np.ndarray | None = None  # (D, bits) float32
        self.bias: np.ndarray | None = None     # (bits,) float32

    # --- learning ------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.weights is not None

    @property
    def dim(self) -> int:
        """The dimension of the vectors it codes (0 before fitting)."""
        return 0 if self.weights is None else int(self.weights.shape[0])

    def learn(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fit(self, x: np.ndarray, rng: np.random.Generator | None = None) -> "LinearCoding":
        """Learn from (N, D) training vectors (a random `max_vectors` of them when there are more)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"coding.method {self.name!r} needs at least 2 training vectors as an (N, D) array, "
                             f"got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"coding.method {self.name!r}: training vectors contain NaN or infinity")
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        if len(x) > self.max_vectors:
            x = x[np.sort(rng.choice(len(x), self.max_vectors, replace=False))]
        weights, bias = self.learn(x, rng)
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        return self

    def fit_extractor(self, extractor, images: Sequence, rng: np.random.Generator, progress) -> "LinearCoding":
        """Learn from the region descriptors (RoI features) `extractor` gives the training images."""
        if not extractor.stores_regions:
            raise ValueError(f"coding.method {self.name!r} learns from region descriptors: set region_pooling.method")
        vectors, global_dim = [], None
        for im in progress(images, desc=f"region features for {self.name}"):
            views, regions_of = extractor.views_and_regions(im)
            vectors.append(extractor.region_pooling(views, regions_of(views[0])))
            if global_dim is None:
                global_dim = extractor._vector(views, regions_of).shape[-1]
        x = np.concatenate(vectors)
        if global_dim != x.shape[1]:
            raise ValueError(f"coding.method {self.name!r}: one hashing layer codes the global vector and the regions, "
                             f"but the global vector has {global_dim} dimensions and a region descriptor {x.shape[1]} "
                             "(use a pooling of the same map without whitening, e.g. pooling.method = 'mac')")
        log.info("%s: learning %d-bit codes from %d region descriptors of %d images", self.name, self.bits, len(x),
                 len(images))
        return self.fit(x, rng)

    # --- coding --------------------------------------------------------------------------------
    def project(self, x: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, bits) float32 pre-threshold values (bit = value >= 0)."""
        if self.weights is None:
            raise RuntimeError(f"coding.method {self.name!r} used before it was fitted")
        x = np.asarray(x, dtype=np.float32)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"coding.method {self.name!r} codes {self.dim}-dimensional vectors, got shape {x.shape}")
        return x @ self.weights + self.bias

    def codes(self, x: np.ndarray) -> np.ndarray:
        """(n, D) or (D,) float vectors -> (n, bits/8) uint8 packed codes."""
        return pack(self.project(x) >= 0)

    def columns(self):
        from ..store import Column
        return [Column(CODES, "uint8", (self.bits // 8,)), Column(REGION_CODES, "uint8", (self.bits // 8,), ragged=True)]

    def encode(self, extractor, views, regions_of, description) -> dict[str, np.ndarray]:
        regions = description.regions
        if regions is None:
            regions = np.zeros((0, self.dim), np.float32)
        return {CODES: self.codes(description.vector)[0],
                REGION_CODES: self.codes(regions) if len(regions) else np.zeros((0, self.bits // 8), np.uint8)}

    def state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "bias": self.bias}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        weights = np.asarray(state["weights"], dtype=np.float32)
        bias = np.asarray(state["bias"], dtype=np.float32)
        if weights.ndim != 2 or weights.shape[1] != self.bits or bias.shape != (self.bits,):
            raise ValueError(f"coding.method {self.name!r}: stored weights {weights.shape} / bias {bias.shape} "
                             f"do not give {self.bits} bits")
        self.weights, self.bias = weights, bias


def _pca(x: np.ndarray, n: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and the top-n principal directions (D, n) of (N, D) vectors, float64."""
    if n > x.shape[1]:
        raise ValueError(f"coding.method {who!r}: {n} bits need {n} principal directions, but the vectors have only "
                         f"{x.shape[1]} dimensions (use bits <= {x.shape[1]})")
    mean, _, axes = principal_axes(x)
    return mean, axes[:, :n]


@CODINGS.register("pca-sign")
class PCASign(LinearCoding):
    """Sign of the top-`bits` PCA projections of the centred vector (the survey's sec. 4.2.4 baseline; bits <= D)."""
    name = "pca-sign"

    def __init__(self, *, bits: Annotated[int, Range(ge=8)] = 1024, max_vectors: Annotated[int, Range(ge=2)] = 200_000, seed: Annotated[int, Range(ge=0)] = 0,
                 keep_float_regions: bool = True):
        super().__init__(bits, max_vectors, seed, keep_float_regions)

    def learn(self, x, rng):
        mean, p = _pca(x, self.bits, self.name)
        return p, -(mean @ p)


@CODINGS.register("itq")
class ITQ(LinearCoding):
    """ITQ: PCA to `bits` dimensions, then the rotation minimising the quantisation loss, `iterations` steps (Gong & Lazebnik 2011)."""
    name = "itq"

    def __init__(self, *, bits: Annotated[int, Range(ge=8)] = 1024, iterations: Annotated[int, Range(ge=0)] = 50, max_vectors: Annotated[int, Range(ge=2)] = 200_000, seed: Annotated[int, Range(ge=0)] = 0,
                 keep_float_regions: bool = True):
        super().__init__(bits, max_vectors, seed, keep_float_regions)
        self.iterations = int(iterations)

    def learn(self, x, rng):
        mean, p = _pca(x, self.bits, self.name)
        v = torch.from_numpy((x - mean) @ p).float()
        r = torch.linalg.qr(torch.from_numpy(rng.standard_normal((self.bits, self.bits))).float())[0]
        for _ in range(self.iterations):
            b = torch.where(v @ r >= 0, 1.0, -1.0)
            # fixed codes B: the orthogonal R maximising tr(B^T V R) is W U^T for B^T V = U S W^T
            u, _, wt = torch.linalg.svd(b.T @ v)
            r = wt.T @ u.T
        weights = p @ r.double().numpy()
        return weights, -(mean @ weights)


@CODINGS.register("lsh")
class LSH(LinearCoding):
    """Random-hyperplane LSH: bit k = sign(r_k . (x - mean)), r_k ~ N(0, I) (Charikar 2002); `center` = false keeps the origin."""
    name = "lsh"

    def __init__(self, *, bits: Annotated[int, Range(ge=8)] = 1024, center: bool = True, max_vectors: Annotated[int, Range(ge=2)] = 200_000, seed: Annotated[int, Range(ge=0)] = 0,
                 keep_float_regions: bool = True):
        super().__init__(bits, max_vectors, seed, keep_float_regions)
        self.center = center

    def learn(self, x, rng):
        r = np.random.default_rng(self.seed).standard_normal((x.shape[1], self.bits))
        mean = x.mean(axis=0, dtype=np.float64) if self.center else np.zeros(x.shape[1])
        return r, -(mean @ r)


# ------------------------------------------------------------------------------------------ DRH


def drh_objective(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, *, alpha: float, beta: float, eta: float,
                  objective: str = "paper", balance: Annotated[float, Range(ge=0)] = 0.0, decorrelation: Annotated[float, Range(ge=0)] = 0.0,
                  orthogonality: Annotated[float, Range(ge=0)] = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DRH's loss (eq. 1-3) on a batch x (N, D) and its gradients by eq. (4): (loss, dl/dW (L, D), dl/db (L,)).

    h = sigma(W x + b), y = 1[h >= 0.5] (a step: no gradient flows through it). The data terms are averaged over
    the batch; for one vector eq. (4) reads dl/dW = ((h - y - alpha h) * sigma'(W x + b)) x^T + beta W and
    dl/db = (h - y - alpha h) * sigma'(W x + b) + eta b (the paper prints sigma'(W h + b), a typo: the
    pre-activation is W x + b). `objective = "balanced"` replaces h by h - mean(h) in the trace term and adds
    balance/2 ||mean(h) - 1/2||^2, decorrelation/4 ||offdiag(C)||^2 / L, C = (H - mean)^T (H - mean) / N, and
    orthogonality/4 ||W W^T - I||^2 (module docstring).
    """
    n, L = x.shape[0], w.shape[0]
    h = torch.sigmoid(x @ w.T + b)
    y = (h >= 0.5).to(h.dtype)
    quant = 0.5 * ((y - h) ** 2).sum() / n
    reg = 0.5 * beta * (w ** 2).sum() + 0.5 * eta * (b ** 2).sum()
    if objective == "paper":
        loss = quant - 0.5 * alpha * (h ** 2).sum() / n + reg
        g_h = (h - y - alpha * h) / n
    elif objective == "balanced":
        mean = h.mean(dim=0)
        hc = h - mean
        c = hc.T @ hc / n
        off = c - torch.diag(torch.diagonal(c))
        loss = (quant - 0.5 * alpha * (hc ** 2).sum() / n + 0.5 * balance * ((mean - 0.5) ** 2).sum()
                + 0.25 * decorrelation * (off ** 2).sum() / L + reg)
        g_h = (h - y - alpha * hc) / n + balance * (mean - 0.5) / n + (decorrelation / L) * (hc @ off) / n
    else:
        raise ValueError(f"coding.objective = {objective!r}: expected 'paper' or 'balanced'")
    g_z = g_h * h * (1.0 - h)
    g_w = g_z.T @ x + beta * w
    if orthogonality and objective == "balanced":
        # ||W W^T - I_L||^2 = ||W^T W||^2 - 2 ||W||^2 + L (the D x D Gram when L > D); gradient rho (W W^T - I) W
        gram = w.T @ w if L > w.shape[1] else w @ w.T
        loss = loss + 0.25 * orthogonality * ((gram ** 2).sum() - 2 * (w ** 2).sum() + L)
        g_w = g_w + orthogonality * ((w @ gram if L > w.shape[1] else gram @ w) - w)
    return loss, g_w, g_z.sum(dim=0) + eta * b


@CODINGS.register("drh", choices={"objective": ("paper", "balanced")})
class DRHHashing(LinearCoding):
    """DRH region hashing layer h = sigma(Wx + b), codes 1[h >= 0.5], SGD with momentum on eq. (1)-(3) (Song et al. sec. 3.1.3)."""
    name = "drh"

    def __init__(self, *, bits: Annotated[int, Range(ge=8)] = 1024, objective: str = "balanced", alpha: Annotated[float, Range(ge=0)] = 100.0, beta: Annotated[float, Range(ge=0)] = 0.001,
                 eta: Annotated[float, Range(ge=0)] = 0.001, balance: Annotated[float, Range(ge=0)] = 100.0, decorrelation: Annotated[float, Range(ge=0)] = 100.0, orthogonality: Annotated[float, Range(ge=0)] = 1.0,
                 lr: Annotated[float, Range(gt=0)] = 0.01,
                 momentum: Annotated[float, Range(ge=0, lt=1)] = 0.9,
                 batch: Annotated[int, Range(ge=1)] = 256, epochs: Annotated[int, Range(ge=1)] = 20, init_std: Annotated[float, Range(gt=0)] = 0.01, max_vectors: Annotated[int, Range(ge=2)] = 200_000, seed: Annotated[int, Range(ge=0)] = 0,
                 keep_float_regions: bool = True):
        super().__init__(bits, max_vectors, seed, keep_float_regions)
        if objective not in ("paper", "balanced"):
            raise ValueError(f"coding.objective = {objective!r}: expected 'paper' or 'balanced'")
        if batch < 2 or epochs < 1 or not lr > 0 or not 0 <= momentum < 1:
            raise ValueError("coding: batch >= 2, epochs >= 1, lr > 0 and 0 <= momentum < 1 are required")
        self.objective, self.alpha, self.beta, self.eta = objective, alpha, beta, eta
        self.balance, self.decorrelation, self.lr, self.momentum = balance, decorrelation, lr, momentum
        self.orthogonality = orthogonality
        self.batch, self.epochs, self.init_std = int(batch), int(epochs), init_std
        self.history: list[dict] = []

    def learn(self, x, rng):
        gen = torch.Generator().manual_seed(self.seed)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        w = torch.randn(self.bits, x.shape[1], generator=gen) * self.init_std
        b = torch.zeros(self.bits)
        vw, vb = torch.zeros_like(w), torch.zeros_like(b)
        self.history = []
        for epoch in range(self.epochs):
            order = torch.from_numpy(rng.permutation(len(x)))
            total = 0.0
            for i in range(0, len(x) - self.batch // 2, self.batch):  # a last batch under half size is skipped
                xb = xt[order[i:i + self.batch]]
                loss, gw, gb = drh_objective(w, b, xb, alpha=self.alpha, beta=self.beta, eta=self.eta,
                                             objective=self.objective, balance=self.balance,
                                             decorrelation=self.decorrelation, orthogonality=self.orthogonality)
                vw.mul_(self.momentum).sub_(self.lr * gw)
                vb.mul_(self.momentum).sub_(self.lr * gb)
                w.add_(vw)
                b.add_(vb)
                total += float(loss) * len(xb)
            with torch.no_grad():
                bits = (xt @ w.T + b >= 0).float()
                ones = bits.mean(dim=0)
            self.history.append({"epoch": epoch + 1, "loss": total / len(x),
                                 "constant_bits": float(((ones == 0) | (ones == 1)).float().mean()),
                                 "mean_ones": float(ones.mean())})
            log.info("drh epoch %d: loss %.4f, constant bits %.3f, fraction of ones %.3f", epoch + 1,
                     self.history[-1]["loss"], self.history[-1]["constant_bits"], self.history[-1]["mean_ones"])
        return w.T.numpy(), b.numpy()
