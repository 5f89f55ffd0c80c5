"""Retrieval metrics of the standard instance-retrieval benchmarks (pure numpy).

References
----------
* Average precision (AP) and mean AP (mAP) as in the survey "Deep Learning for Instance
  Retrieval: A Survey" (Chen et al.), section 6.2, eq. (18)-(19), computed with the
  trapezoidal rule of the Oxford Buildings ``compute_ap.cpp`` and of the revisitop
  package (Radenovic et al., "Revisiting Oxford and Paris: Large-Scale Image Retrieval
  Benchmarking", CVPR 2018), whose ``compute_map`` (python/evaluate.py) this module
  reproduces, including its mP@k definition.
* The Easy / Medium / Hard protocols of the revisited Oxford and Paris datasets, as set
  up in revisitop's ``example_evaluate.py``.
* The N-S score of UKBench (Nister & Stewenius, "Scalable Recognition with a Vocabulary
  Tree", CVPR 2006): the number of the query's group among the top 4 results, averaged.

Conventions: every ranking in this module is an integer array of shape ``(Q, N)`` whose row
``q`` lists database indices for query ``q``, best match first (revisitop itself stores the
transpose, ``(N, Q)``). A row may be shorter than the database (a truncated top-N'
ranking): positives missing from it contribute nothing to the AP.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KAPPAS = (1, 5, 10)
PROTOCOLS = ("easy", "medium", "hard")

__all__ = [
    "DEFAULT_KAPPAS",
    "PROTOCOLS",
    "average_precision",
    "positive_positions",
    "compute_map",
    "map_summary",
    "revisited_protocols",
    "ns_score",
    "ns_hits",
]


def _as_ranks(ranks: np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be a 2-D (queries, database) array, got shape {ranks.shape}")
    if ranks.size and not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must hold integer database indices, got dtype {ranks.dtype}")
    return ranks


def average_precision(ranks_of_positives: np.ndarray, n_positives: int) -> float:
    """Trapezoidal average precision of one query (Oxford ``compute_ap`` / revisitop ``compute_ap``).

    Parameters
    ----------
    ranks_of_positives : (P,) int array
        0-based positions of the retrieved positives in the ranking, ascending, counted
        after the junk images have been removed from the ranking.
    n_positives : int
        Number of positives the query has in the whole database (P <= n_positives;
        positives that were not retrieved simply add no area).

    For the j-th retrieved positive (j = 0, 1, ...) at position r, the precision on the left
    side of its recall step is ``1 if r == 0 else j / r`` and on the right side
    ``(j + 1) / (r + 1)``; the step adds the trapezoid ``(p0 + p1) / 2 / n_positives``.
    The terms are accumulated left to right in revisitop's operation order, so the result
    is bit-identical to the reference implementation.
    """
    r = np.asarray(ranks_of_positives, dtype=np.float64).reshape(-1)
    if n_positives <= 0:
        raise ValueError(f"n_positives must be positive, got {n_positives}")
    if r.size == 0:
        return 0.0
    if r.size > n_positives:
        raise ValueError(f"{r.size} ranks of positives given but n_positives is {n_positives}")
    j = np.arange(r.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = np.where(r == 0, 1.0, j / np.where(r == 0, 1.0, r))
    p1 = (j + 1.0) / (r + 1.0)
    recall_step = 1.0 / n_positives
    terms = (p0 + p1) * recall_step / 2.0
    # cumsum accumulates sequentially (unlike np.sum's pairwise sum): same rounding as the loop.
    return float(np.cumsum(terms)[-1])


def positive_positions(row: np.ndarray, ok: np.ndarray, junk: np.ndarray | None = None) -> np.ndarray:
    """0-based positions of the positives `ok` in one ranking `row` (N,), junk removed first.

    A positive's position is lowered by the number of junk images ranked before it, i.e. the
    position it has in the ranking once all junk images are deleted (revisitop semantics).
    Returns an ascending (P,) int64 array.
    """
    row = np.asarray(row).reshape(-1)
    pos = np.flatnonzero(np.isin(row, ok))
    if junk is not None and len(junk):
        jpos = np.flatnonzero(np.isin(row, junk))
        if jpos.size:
            pos = pos - np.searchsorted(jpos, pos, side="left")
    return pos.astype(np.int64)


def compute_map(
    ranks: np.ndarray,
    gnd: Sequence[Mapping[str, Iterable[int]]],
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """mAP and mean precision at k, exactly as revisitop's ``compute_map``.

    Parameters
    ----------
    ranks : (Q, N) int array
        Row q: database indices for query q, best first (the transpose of revisitop's input).
    gnd : list of Q dicts
        ``gnd[q]['ok']``: indices of the positives; ``gnd[q]['junk']`` (optional): indices
        ignored by the metric (removed from the ranking before positions are counted).
    kappas : sequence of int
        The k of mP@k.

    Returns
    -------
    mAP : float
        Mean of the APs of the queries that have at least one positive (NaN if none has).
    aps : (Q,) float array
        AP per query; NaN for a query without positives (excluded from every mean).
    mpr : (len(kappas),) float array
        Mean precision at each k over the same queries.
    prs : (Q, len(kappas)) float array
        Precision at each k per query, with revisitop's definition: with ``pos`` the 1-based
        positions of the positives (junk removed), ``kq = min(max(pos), k)`` and
        ``P@k = (pos <= kq).sum() / kq``. So when all retrieved positives lie above rank k
        the divisor is the last positive's position rather than k (e.g. a single positive at
        position 1 gives P@5 = 1, not 0.2). A query none of whose positives is in a
        truncated ranking gets P@k = 0 (revisitop has no such case).
    """
    ranks = _as_ranks(ranks)
    kappas = [int(k) for k in kappas]
    nq = len(gnd)
    if ranks.shape[0] != nq:
        raise ValueError(f"ranks has {ranks.shape[0]} rows (queries) but the ground truth has {nq} queries")
    aps = np.zeros(nq)
    prs = np.zeros((nq, len(kappas)))
    mpr = np.zeros(len(kappas))
    total = 0.0
    nempty = 0
    for i in range(nq):
        ok = np.asarray(gnd[i]["ok"], dtype=np.int64).reshape(-1)
        if ok.size == 0:
            aps[i] = np.nan
            prs[i, :] = np.nan
            nempty += 1
            continue
        junk = np.asarray(gnd[i].get("junk", ()), dtype=np.int64).reshape(-1)
        pos = positive_positions(ranks[i], ok, junk)
        ap = average_precision(pos, ok.size)
        aps[i] = ap
        total += ap
        pos1 = pos + 1  # 1-based
        for j, k in enumerate(kappas):
            if pos1.size == 0:
                prs[i, j] = 0.0
                continue
            kq = min(int(pos1.max()), k)
            prs[i, j] = (pos1 <= kq).sum() / kq
        mpr = mpr + prs[i, :]
    n = nq - nempty
    if n == 0:
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    return total / n, aps, mpr / n, prs


def map_summary(m: float, mpr: Sequence[float], kappas: Sequence[int] = DEFAULT_KAPPAS) -> dict[str, float]:
    """``{'map': m, 'mp@k': ...}`` as plain floats, from `compute_map`'s mAP and mean precisions."""
    out = {"map": float(m)}
    out.update({f"mp@{int(k)}": float(v) for k, v in zip(kappas, mpr)})
    return out


def _cat(*parts) -> np.ndarray:
    arrays = [np.asarray(p, dtype=np.int64).reshape(-1) for p in parts]
    return np.concatenate(arrays) if arrays else np.empty(0, np.int64)


def revisited_protocols(
    ranks: np.ndarray,
    gnd_entries: Sequence[Mapping[str, Iterable[int]]],
    kappas: Sequence[int] = DEFAULT_KAPPAS,
) -> dict[str, dict]:
    """Easy, Medium and Hard evaluation of Revisited Oxford / Paris (revisitop ``example_evaluate``).

    Parameters
    ----------
    ranks : (Q, N) int array, row q = database indices best first for query q.
    gnd_entries : list of Q dicts with ``easy``, ``hard``, ``junk`` index lists (the
        ``gnd`` list of a ``gnd_*.pkl`` file; ``bbx`` is ignored here).

    Protocols: Easy: ok = easy, junk = junk + hard. Medium: ok = easy + hard, junk = junk.
    Hard: ok = hard, junk = junk + easy. A query with no positive under a protocol (e.g. no
    hard image) has AP NaN there and is left out of that protocol's means.

    Returns
    -------
    ``{'easy'|'medium'|'hard': {'map': float, 'mp@1': float, 'mp@5': float, 'mp@10': float,
    'aps': (Q,) array, 'prs': (Q, len(kappas)) array}}`` (one ``mp@k`` per k in `kappas`);
    values are fractions in [0, 1].
    """
    setups = {
        "easy": lambda g: {"ok": _cat(g["easy"]), "junk": _cat(g["junk"], g["hard"])},
        "medium": lambda g: {"ok": _cat(g["easy"], g["hard"]), "junk": _cat(g["junk"])},
        "hard": lambda g: {"ok": _cat(g["hard"]), "junk": _cat(g["junk"], g["easy"])},
    }
    out: dict[str, dict] = {}
    for proto, make in setups.items():
        m, aps, mpr, prs = compute_map(ranks, [make(g) for g in gnd_entries], kappas)
        res: dict = map_summary(m, mpr, kappas)
        res["aps"] = aps
        res["prs"] = prs
        out[proto] = res
    return out


def ns_hits(ranks: np.ndarray, groups: np.ndarray, query_db_index: np.ndarray, top: int = 4) -> np.ndarray:
    """Per-query count of images of the query's group among the first `top` results.

    ranks (Q, N) int, groups (N,) int group id of every database image, query_db_index (Q,)
    int index of each query's own image in the database. Returns (Q,) int.
    """
    ranks = _as_ranks(ranks)
    groups = np.asarray(groups).reshape(-1)
    qidx = np.asarray(query_db_index, dtype=np.int64).reshape(-1)
    if ranks.shape[0] != qidx.size:
        raise ValueError(f"ranks has {ranks.shape[0]} rows but {qidx.size} query indices were given")
    if ranks.shape[1] < top:
        raise ValueError(f"the N-S score needs at least {top} results per query, ranks has {ranks.shape[1]}")
    top_groups = groups[ranks[:, :top]]
    return (top_groups == groups[qidx][:, None]).sum(axis=1)


def ns_score(ranks: np.ndarray, groups: np.ndarray, query_db_index: np.ndarray) -> float:
    """UKBench N-S score: mean over queries of the number of the query's group in the top 4.

    ranks (Q, N) int (row = query, best first), groups (N,) int, query_db_index (Q,) int.
    The query image stays in the database and counts when retrieved, so the maximum is 4.0
    (with the UKBench groups of four).
    """
    hits = ns_hits(ranks, groups, query_db_index)
    return float(hits.mean()) if hits.size else float("nan")
