"""Binary codes: packing bits 8 to a byte, and Hamming distances between packed codes ((n, bits/8) uint8).

- `pack` / `unpack`: {0, 1} bits <-> packed bytes (bit k is bit 7 - k % 8 of byte k // 8, `np.packbits`);
  `pack_signs`: the sign binarisation b(x) = +1 if x > 0 else -1 of ASMK* as packed bits (1 = positive).
- `paired_hamming` / `binary_similarity`: distances between corresponding rows, and the normalised inner product
  1 - 2 h / D of the +-1 vectors they stand for.

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


def pack(bits: np.ndarray) -> np.ndarray:
    """(n, L) {0, 1} / bool -> (n, L/8) uint8 packed codes (L a multiple of 8)."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] % 8:
        raise ValueError(f"codes to pack must be (n, L) with L a multiple of 8, got shape {bits.shape}")
    return np.packbits(bits.astype(bool), axis=1)


def unpack(codes: np.ndarray, bits: int | None = None) -> np.ndarray:
    """(n, B) uint8 packed codes -> (n, 8B) uint8 in {0, 1} (the first `bits` of them if given)."""
    out = np.unpackbits(_check(codes, "packed codes"), axis=1)
    return out if bits is None else out[:, :bits]


def pack_signs(x: np.ndarray) -> np.ndarray:
    """Binarise (N, D) vectors (b(x) = +1 if x > 0 else -1) into (N, ceil(D/8)) uint8 packed bits (1 = positive)."""
    return np.packbits(np.asarray(x) > 0, axis=-1)


def paired_hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of packed bit arrays (N, B) and (N, B) (or broadcastable) -> (N,) int."""
    x = np.bitwise_xor(a, b)
    if x.shape[-1] % 8 == 0 and x.flags.c_contiguous:
        x = x.view(np.uint64)
    return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)


def binary_similarity(a: np.ndarray, b: np.ndarray, dim: int) -> np.ndarray:
    """Normalised inner product of binarised (+-1) vectors of `dim` bits: 1 - 2 h / dim."""
    return (1.0 - 2.0 * paired_hamming(a, b) / dim).astype(np.float32)
