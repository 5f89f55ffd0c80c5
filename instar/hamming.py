"""Hamming distances between packed binary codes ((n, bits/8) uint8, `instar.coding.pack`).

- `knn`: the k nearest database codes of each query code, exact, through faiss's heap kernel
  (`faiss.knn_hamming`, variant "hc": the `hammings_knn_hc` that `IndexBinaryFlat` runs) called on the codes
  where they lie (the index's memory map), without copying them into an `IndexBinaryFlat`, and with all queries of
  a batch in one pass over the database (IndexBinaryFlat splits them in blocks of 32, one pass each).
  `benchmarks/hamming.py` measures it against `IndexBinaryFlat` in the same run. Ties are ordered by database
  position, so a ranking is deterministic (the distances are those of any exact search).
- `distances`: all distances between two small sets (re-ranking M images' regions): faiss's `hammings` where a code
  is a whole number of 64-bit words (16,000 x 6 codes of 1024 bits: 0.15 ms, numpy's popcount on the same words
  19 ms), numpy's `bitwise_count` on bytes otherwise.
"""
from __future__ import annotations

import faiss
import numpy as np


def _check(codes: np.ndarray, what: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(f"{what}: packed codes must be an (n, B) uint8 array, got {codes.dtype} {codes.shape}")
    return codes


def knn(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming k-NN: (N, B) database and (Q, B) query codes -> distances (Q, k') int32 and positions (Q, k')
    int64, ascending, ties by position; k' = min(k, N)."""
    database, queries = _check(database, "database codes"), _check(queries, "query codes")
    if database.shape[1] != queries.shape[1]:
        raise ValueError(f"query codes of {8 * queries.shape[1]} bits, database codes of {8 * database.shape[1]} bits")
    k = min(int(k), len(database))
    if k <= 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64)
    d, i = faiss.knn_hamming(np.ascontiguousarray(queries), np.ascontiguousarray(database), k, "hc")
    # the heap returns equal distances in no particular order: order them by position
    order = np.lexsort((i, d), axis=1)
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All Hamming distances between (n, B) and (m, B) packed codes: (n, m) int32."""
    a, b = _check(a, "codes"), _check(b, "codes")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"codes of {8 * a.shape[1]} and {8 * b.shape[1]} bits cannot be compared")
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.shape[1] % 8 == 0 and len(a) and len(b):
        out = np.empty((len(a), len(b)), dtype=np.int32)
        faiss.hammings(faiss.swig_ptr(a), faiss.swig_ptr(b), len(a), len(b), a.shape[1], faiss.swig_ptr(out))
        return out
    return np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int32)
