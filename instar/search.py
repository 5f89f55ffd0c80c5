"""Search stage: filter (exact inner-product k-NN through faiss) -> re-rank slot -> query expansion -> hits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np

from .expansion import alpha_query_expansion, average_query_expansion

# A re-ranker takes (queries (Q, D), candidate rows (Q, K), scores (Q, K)) and returns re-ordered (rows, scores).
Reranker = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Hit:
    """One ranked result. `box` is where the object is in the image, (x0, y0, x1, y1) original pixels;
    a global-descriptor preset does not localise, so its hits carry the whole image."""
    rank: int
    score: float
    row: int
    id: int
    name: str
    path: str
    box: tuple[float, float, float, float]


def knn(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum inner product search: (N, D) database, (Q, D) queries -> scores (Q, k'), rows (Q, k'), k' = min(k, N)."""
    n = vectors.shape[0]
    k = min(int(k), n)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if k == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    scores, rows = faiss.knn(q, np.ascontiguousarray(vectors, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, rows.astype(np.int64)


def search_vectors(vectors: np.ndarray, queries: np.ndarray, k: int, *, expansion: str = "none", qe_top: int = 10,
                   alpha: float = 3.0, rerank: Reranker | None = None, rerank_top: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The whole search pipeline on descriptors: returns scores (Q, k') and database rows (Q, k'), best first.

    filter: k-NN over all vectors; re-rank: `rerank` re-orders the top `rerank_top` (no re-ranker: unchanged);
    expansion: 'aqe' / 'alpha-qe' build a new query from the top `qe_top` and search again.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if expansion not in ("none", "aqe", "alpha-qe"):
        raise ValueError(f"unknown query expansion {expansion!r} (none, aqe, alpha-qe)")
    first_k = max(k, qe_top if expansion != "none" else 0, rerank_top if rerank is not None else 0)
    scores, rows = knn(vectors, queries, first_k)
    if rerank is not None:
        top = min(rerank_top, rows.shape[1])
        rr_rows, rr_scores = rerank(queries, rows[:, :top], scores[:, :top])
        rows = np.concatenate([rr_rows, rows[:, top:]], axis=1)
        scores = np.concatenate([rr_scores, scores[:, top:]], axis=1)
    if expansion != "none" and qe_top > 0 and rows.shape[1] > 0:
        m = min(qe_top, rows.shape[1])
        neighbours = np.asarray(vectors[rows[:, :m].reshape(-1)], dtype=np.float32).reshape(len(queries), m, -1)
        if expansion == "aqe":
            expanded = average_query_expansion(queries, neighbours)
        else:
            expanded = alpha_query_expansion(queries, neighbours, scores[:, :m], alpha)
        scores, rows = knn(vectors, expanded, k)
    return scores[:, :k], rows[:, :k]


def search(index, query: Path | str | np.ndarray, *, box: Sequence[float] | None = None, k: int | None = None,
           expansion: str | None = None, qe_top: int | None = None, alpha: float | None = None) -> list[Hit]:
    """Search an `instar.Index` with an image file (optionally a box on it) or a ready (D,) descriptor.

    Options left as None take the index's preset `[search]` values. Only live (not removed) images are
    searched, in one consistent snapshot of the index. A query with no usable content (an image too small,
    blank or featureless for its descriptor to be non-zero) is refused with an `ImageLoadError`.
    """
    from .images import ImageLoadError
    from .index import GLOBAL, descriptor_problem

    cfg = index.preset["search"]
    k = cfg["k"] if k is None else k
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k={k}: the number of hits must be a whole number of at least 1")
    k = int(k)
    if isinstance(query, np.ndarray):
        if box is not None:
            raise ValueError("a box applies to a query image, not to a ready descriptor")
        q = query.astype(np.float32)
        problem = descriptor_problem(q)
        if problem:
            raise ValueError(f"query descriptor: {problem}")
    else:
        q = index.extractor.describe(query, box)
        problem = descriptor_problem(q)
        if problem:
            where = "" if box is None else f"box {','.join(f'{float(v):g}' for v in box)}: "
            raise ImageLoadError(query, where + problem)
    snap = index.snapshot()
    live = snap.live_rows()
    if len(live) == 0:
        return []
    vectors = snap.column(GLOBAL)
    if q.shape != vectors.shape[1:]:
        raise ValueError(f"query descriptor of shape {q.shape}, the index holds dimension {vectors.shape[1]}")
    database = vectors if len(live) == snap.n_rows else np.asarray(vectors[live])
    scores, positions = search_vectors(database, q[None, :], k, expansion=expansion or cfg["expansion"],
                                       qe_top=cfg["qe_top"] if qe_top is None else qe_top,
                                       alpha=cfg["alpha"] if alpha is None else alpha)
    rows = live[positions[0]]
    records = index.records(rows.tolist())
    return [Hit(rank=i + 1, score=float(s), row=r.row, id=r.id, name=r.name, path=r.path,
                box=(0.0, 0.0, float(r.width), float(r.height)))
            for i, (s, r) in enumerate(zip(scores[0], records))]
