"""Approximate float search: a faiss index over an instar index's global vectors, kept as derived data.

The faiss index is named by its factory string (`"HNSW32"`, `"IVF1024,PQ64"`, `"OPQ64,IVF4096,PQ64"`, `"Flat"`,
...) with inner-product metric; labels are store rows. It is *derived* (`instar.store.derived`): rebuildable from
the `global` column at any time, never the only copy of anything.

- Built once: a trained factory (IVF, PQ, OPQ) is trained on the store's first `train` rows (the rows are in
  commit order, so a re-build trains on the same rows); then every committed row is added in order (removed
  rows too: they are masked at query time, so a removal never touches the index).
- Kept current: a process holds one per (store, factory, train) and adds the rows committed since (incremental:
  cost proportional to what was added); a snapshot older than the index masks the rows it has not committed.
- Persisted: `derived/ann.<factory>.<train>.bin`, written atomically (temp + fsync + rename) with a crc32 and
  the store's identity, when first built and whenever the rows it lacks grew past a twentieth of it (at least
  1,024); a missing, damaged, foreign or
  stale file is rebuilt from the column (stale: covers fewer rows than committed -> the rest are added).
- Masked: removed rows (and rows past the snapshot) are excluded inside the search by a faiss `IDSelector`, so
  the search costs what the index's search costs, not a copy of the live vectors.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field

import faiss
import numpy as np

from ..store import derived
from ..store.columns import GLOBAL

log = logging.getLogger(__name__)

ADD_BLOCK = 1 << 15
_CACHE: dict[tuple, "AnnIndex"] = {}
_LOCK = threading.Lock()


@dataclass
class AnnIndex:
    """A faiss index over rows [0, n_rows) of one store; `lock` serialises adds and searches."""
    factory: str
    index: faiss.Index
    n_rows: int
    saved_rows: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _slug(factory: str, train: int) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", factory) + f".{train}"


def _path(store, factory: str, train: int, column: str = GLOBAL):
    prefix = "ann" if column == GLOBAL else f"ann-{column}"
    return derived.directory(store) / f"{prefix}.{_slug(factory, train)}.bin"


def _binary(vectors: np.ndarray) -> bool:
    return vectors.dtype == np.uint8


def _new(vectors: np.ndarray, factory: str, train: int) -> faiss.Index:
    dim = vectors.shape[1]
    try:
        if _binary(vectors):  # packed codes: a binary factory ("BIVF1024", "BHNSW32", "BFlat"), Hamming distance
            index = faiss.index_binary_factory(8 * dim, factory)
        else:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"filter.index = {factory!r}: not a faiss index factory string ({e})") from None
    ivf = None if _binary(vectors) else faiss.try_extract_index_ivf(faiss.downcast_index(index))
    for part in (index, ivf):
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False  # Hamming-filtered PQ search is not used: skip its long training
    if not index.is_trained:
        sample = np.ascontiguousarray(vectors[:min(train, len(vectors))], dtype=vectors.dtype)
        try:
            index.train(sample)
        except RuntimeError as e:
            raise ValueError(f"filter.index = {factory!r}: cannot be trained on the index's first {len(sample)} "
                             f"rows ({e}); use a smaller factory (fewer IVF lists) or add more images") from None
    return index


def _read_index(blob: np.memmap, binary: bool) -> faiss.Index:
    """A faiss index from its serialised bytes `blob` (a memory map of the derived file, already checksummed),
    streamed from the file in 16 MiB reads: `deserialize_index` would first copy all of it into one buffer."""
    path, offset, size = blob.filename, blob.offset, blob.nbytes
    del blob  # the checksum's pages need not stay mapped while faiss reads
    with open(path, "rb") as f:
        f.seek(offset)
        left = [size]

        def read(n: int) -> bytes:
            n = min(n, left[0])
            left[0] -= n
            return f.read(n)
        reader = faiss.PyCallbackIOReader(read, 1 << 24)
        return faiss.read_index_binary(reader) if binary else faiss.read_index(reader)


def _load(store, factory: str, train: int, column: str, dim: int) -> tuple[faiss.Index, int] | None:
    # memory-mapped (checked, not copied), then streamed into faiss: a 1M-row HNSW32 file is 5 GB
    got = derived.load(_path(store, factory, train, column), mmap=True)
    if got is None:
        return None
    arrays, meta = got
    if (meta.get("identity") != derived.identity(store) or meta.get("factory") != factory
            or meta.get("train") != train or "index" not in arrays):
        return None
    try:
        index = _read_index(arrays.pop("index"), binary=column != GLOBAL)
    except RuntimeError as e:
        log.warning("%s: not a faiss index (%s); rebuilding it", _path(store, factory, train, column), e)
        return None
    if index.d != (dim if column == GLOBAL else 8 * dim) or index.ntotal != meta.get("rows"):
        return None
    return index, int(index.ntotal)


def _save(store, ann: AnnIndex, train: int, column: str) -> None:
    blob = faiss.serialize_index(ann.index) if column == GLOBAL else faiss.serialize_index_binary(ann.index)
    if derived.save(_path(store, ann.factory, train, column), {"index": blob},
                    {"identity": derived.identity(store), "factory": ann.factory, "train": train, "rows": ann.n_rows}):
        ann.saved_rows = ann.n_rows


def _key(store, factory: str, train: int, column: str) -> tuple:
    return (str(store.directory.resolve()), tuple(derived.identity(store)), factory, train, column)


def for_snapshot(snapshot, factory: str, train: int, column: str = GLOBAL) -> AnnIndex:
    """The process's faiss index over a fixed column (`global` floats, or `codes`: packed binary codes, a binary
    factory) of a store snapshot: loaded or built once, then extended with the rows committed since; saved as
    derived data when it grew enough."""
    store = snapshot.store
    vectors = snapshot.column(column)
    key = _key(store, factory, train, column)
    with _LOCK:
        ann = _CACHE.get(key)
        if ann is None:
            loaded = _load(store, factory, train, column, vectors.shape[1]) if snapshot.n_rows else None
            if loaded is not None:
                ann = AnnIndex(factory, loaded[0], loaded[1], loaded[1])
            else:
                ann = AnnIndex(factory, _new(vectors, factory, train), 0)
            _CACHE[key] = ann
    with ann.lock:
        if ann.n_rows < snapshot.n_rows:
            for lo in range(ann.n_rows, snapshot.n_rows, ADD_BLOCK):
                hi = min(lo + ADD_BLOCK, snapshot.n_rows)
                ann.index.add(np.ascontiguousarray(vectors[lo:hi], dtype=vectors.dtype))
            ann.n_rows = snapshot.n_rows
            if not ann.saved_rows or ann.n_rows - ann.saved_rows >= max(1024, ann.saved_rows // 20):
                _save(store, ann, train, column)
    return ann


def search_parameters(index: faiss.Index, selector, nprobe: int, ef_search: int):
    """faiss search parameters for `index`'s kind (IVF: nprobe; HNSW: efSearch), with `selector` (or None)."""
    inner = faiss.downcast_index(index)
    wrap = isinstance(inner, faiss.IndexPreTransform)
    if wrap:
        inner = faiss.downcast_index(inner.index)
    if faiss.try_extract_index_ivf(inner) is not None:
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(ef_search))
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    if wrap:
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = params
        return outer, params
    return params, params


def selector(n_rows: int, index_rows: int, removed: np.ndarray):
    """An IDSelector keeping rows [0, n_rows) that are not `removed` (store rows), or None if it keeps all of
    the index's `index_rows`. Returns (selector, the objects it points to, which must stay alive)."""
    parts = []
    if n_rows < index_rows:
        parts.append(faiss.IDSelectorRange(0, n_rows))
    if len(removed):
        batch = faiss.IDSelectorBatch(np.ascontiguousarray(removed, dtype=np.int64))
        parts += [batch, faiss.IDSelectorNot(batch)]
    if not parts:
        return None, ()
    if n_rows < index_rows and len(removed):
        both = faiss.IDSelectorAnd(parts[0], parts[2])
        return both, (both, *parts)
    return parts[-1], tuple(parts)


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
