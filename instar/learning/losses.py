"""Ranking losses over L2-normalised descriptors, and the hard-example mining that feeds them.

- `triplet`: Gordo et al.'s ranking loss, eq. (1): L(q, d+, d-) = 1/2 max(0, m + |q - d+|^2 - |q - d-|^2), margin
  m = 0.1 (their value).
- `contrastive`: the Siamese loss of the survey's eq. (13) with D the squared distance (eq. 11):
  L(i, j) = 1/2 D for a matching pair, 1/2 max(0, m - D) for a non-matching one. Its default margin, 0.5 on the
  squared distance (a cosine below 0.75 stops pushing), is ours; cirtorch's 0.7 on the plain distance is ~0.49.

Mining (Gordo et al. sec. 5.1): embed a pool of training images with the current network, compute the loss of
every tuple the pool holds (every anchor x positive x negative for triplets; every pair for contrastive), and
sample the tuples for the next updates among those with a non-zero loss, each with probability proportional to
its loss ("triplets with a large loss", hard negatives), without replacement when there are enough (with
replacement otherwise). Contrastive rounds draw half matching and half non-matching pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.metrics import compute_map


@dataclass
class Mined:
    """One mining round: `tuples` (T, 3) int64 indices into the pool (triplets: anchor, positive, negative;
    pairs: i, j, 1 if matching), and over every tuple the pool holds: how many (`considered`), how many have a
    non-zero loss (`active`), and their mean loss (`mean_loss`, the pool's loss, which training should lower)."""
    tuples: np.ndarray
    considered: int
    active: int
    mean_loss: float


def squared_distances(E: np.ndarray) -> np.ndarray:
    """(P, P) squared Euclidean distances of L2-normalised rows, 2 - 2 cos, clipped at 0."""
    E = np.asarray(E, dtype=np.float64)
    return np.clip(2.0 - 2.0 * (E @ E.T), 0.0, None)


def _sample(losses: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `count` draws among `losses` (all > 0), each with probability proportional to its loss."""
    if count <= 0 or len(losses) == 0:
        return np.zeros(0, np.int64)
    return rng.choice(len(losses), size=count, replace=len(losses) < count, p=losses / losses.sum()).astype(np.int64)


class TripletLoss:
    """Ranking triplet loss (Gordo et al. eq. 1) with hard-triplet mining."""
    name = "triplet"
    default_margin = 0.1
    arity = 3

    def __init__(self, margin: float | None = None):
        self.margin = self.default_margin if margin is None else float(margin)

    def losses(self, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """(T,) losses of triplets given as (T, D) anchors, positives, negatives."""
        dp = (q - p).pow(2).sum(dim=-1)
        dn = (q - n).pow(2).sum(dim=-1)
        return 0.5 * torch.clamp(self.margin + dp - dn, min=0.0)

    def __call__(self, D: torch.Tensor, tuples: np.ndarray) -> torch.Tensor:
        """Mean loss of `tuples` (T, 3) rows into the descriptors `D` (N, D)."""
        t = torch.as_tensor(np.asarray(tuples, np.int64))
        return self.losses(D[t[:, 0]], D[t[:, 1]], D[t[:, 2]]).mean()

    def mine(self, E: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> Mined:
        """Every (anchor, positive, negative) of the pool `E` (P, D) with `labels` (P,); `count` sampled by loss."""
        labels = np.asarray(labels)
        sq = squared_distances(E)
        found, values = [], []
        considered, total = 0, 0.0
        idx = np.arange(len(labels))
        for a in idx:
            same = labels == labels[a]
            pos, neg = idx[same & (idx != a)], idx[~same]
            if not len(pos) or not len(neg):
                continue
            L = 0.5 * np.maximum(0.0, self.margin + sq[a, pos][:, None] - sq[a, neg][None, :])
            considered += L.size
            total += float(L.sum())
            i, j = np.nonzero(L > 0)
            if len(i):
                found.append(np.stack([np.full(len(i), a), pos[i], neg[j]], axis=1))
                values.append(L[i, j])
        if not found:
            return Mined(np.zeros((0, 3), np.int64), considered, 0, 0.0)
        cand, losses = np.concatenate(found).astype(np.int64), np.concatenate(values)
        return Mined(cand[_sample(losses, count, rng)], considered, len(cand), total / max(considered, 1))


class ContrastiveLoss:
    """Contrastive (Siamese) loss, survey eq. 13, with hard-pair mining."""
    name = "contrastive"
    default_margin = 0.5
    arity = 3

    def __init__(self, margin: float | None = None):
        self.margin = self.default_margin if margin is None else float(margin)

    def losses(self, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        d = (a - b).pow(2).sum(dim=-1)
        return torch.where(same, 0.5 * d, 0.5 * torch.clamp(self.margin - d, min=0.0))

    def __call__(self, D: torch.Tensor, tuples: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(tuples, np.int64))
        return self.losses(D[t[:, 0]], D[t[:, 1]], t[:, 2] == 1).mean()

    def mine(self, E: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> Mined:
        """Every pair of the pool; half of `count` matching pairs and half non-matching ones, sampled by loss."""
        labels = np.asarray(labels)
        sq = squared_distances(E)
        i, j = np.triu_indices(len(labels), k=1)
        same = labels[i] == labels[j]
        L = np.where(same, 0.5 * sq[i, j], 0.5 * np.maximum(0.0, self.margin - sq[i, j]))
        parts = []
        for want, mask in ((count // 2, same), (count - count // 2, ~same)):
            keep = np.flatnonzero(mask & (L > 0))
            chosen = keep[_sample(L[keep], want, rng)]
            parts.append(np.stack([i[chosen], j[chosen], same[chosen].astype(np.int64)], axis=1))
        active = int((L > 0).sum())
        return Mined(np.concatenate(parts).astype(np.int64), len(L), active, float(L.mean()) if len(L) else 0.0)


LOSSES = {"triplet": TripletLoss, "contrastive": ContrastiveLoss}


def make_loss(name: str, margin: float | None = None):
    if name not in LOSSES:
        raise ValueError(f"loss {name!r}: expected one of {', '.join(LOSSES)}")
    return LOSSES[name](margin)


def all_vs_all_map(E: np.ndarray, labels: np.ndarray) -> float:
    """mAP of every image as a query against the others (the other images of its object the positives, itself
    ignored), as UKBench-style all-vs-all protocols score it. NaN when no image has a positive."""
    labels = np.asarray(labels)
    E = np.asarray(E, dtype=np.float32)
    ranks = np.argsort(-(E @ E.T), axis=1, kind="stable")
    idx = np.arange(len(labels))
    gnd = [{"ok": idx[(labels == labels[q]) & (idx != q)], "junk": np.array([q])} for q in idx]
    return float(compute_map(ranks, gnd)[0])
