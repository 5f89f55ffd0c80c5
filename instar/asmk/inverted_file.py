"""Inverted file over the aggregated match kernels' per-image columns: per visual word, the items (images, or
regions) that use it with their aggregated residual (packed bits for ASMK*), kept as derived data beside the store.

Source of truth. The index's store keeps, per image (row), its entries in ragged columns -- `asmk_words` (word
ids), `asmk_codes` (packed signs) or `asmk_vectors` (float residuals), `asmk_item` (region of each entry, when
regions are stored separately) -- and one factor per item in `asmk_gamma`. Those columns follow the store's rules
(append-only, fsync'ed before one SQLite commit, tombstones, readers map only committed bytes), so the inverted
file is *derived* from a store snapshot (`instar.store.derived`): built in memory, cached per store, and saved to
`derived/asmk.K.images.bin` (segments' posting lists, memory-mapped when a new process loads it; atomic,
checksummed, tied to the store's identity, rebuilt when missing or damaged, extended when stale).

Generations. A store only grows (rows appended) and gains tombstones; committed bytes never change. So a cached
inverted file built for rows [0, n) stays right for every later snapshot: new rows are added as a new *segment*
(postings of rows [n, n') only: cost proportional to what was added), tombstoned rows are masked out at query time
with the snapshot's live rows, and a snapshot older than the cache simply ignores rows it has not committed. After
`MAX_SEGMENTS` segments they are merged into one (one sort of all entries). Readers never modify anything, and a
searcher holding an older `InvertedFile` object keeps a consistent one (objects are immutable; the cache swaps
them under a lock).

Cost: building sorts the entries by word (O(T log T) for T entries, ~0.1 s for 10^6 entries on this project's
CPU), and the postings (word-ordered copies of the codes: 16 bytes per entry for 128-D ASMK*) take memory once per
process, or are mapped from the derived file by a new process (which then only reads it once for its checksum).

Query cost: for each of the query's words, its posting list -- the sum of the touched lists' lengths -- plus one
pass over the items' scores (the dense score vector of the N items, and the top-k of it).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.groups import concat_ranges
from ..store import derived
from ..store.columns import ASMK_CODES as CODES
from ..store.columns import ASMK_GAMMA as GAMMA
from ..store.columns import ASMK_ITEM as ITEM
from ..store.columns import ASMK_VECTORS as VECTORS
from ..store.columns import ASMK_WORDS as WORDS
from .kernel import Aggregated, entry_similarities, match_sigma

MAX_SEGMENTS = 8

@dataclass(frozen=True)
class Segment:
    """Postings of rows [lo, hi): `offsets` (K+1,) into the word-sorted entries, their items (global ids: positions
    in the store's gamma column) and data."""
    lo: int
    hi: int
    offsets: np.ndarray
    items: np.ndarray
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.items.nbytes + self.data.nbytes)


def build_segment(words: np.ndarray, items: np.ndarray, data: np.ndarray, k: int, lo: int, hi: int) -> Segment:
    """Postings from entries (words (T,), global items (T,), data (T, B)): stable sort by word."""
    words = np.asarray(words, dtype=np.int64)
    if len(words) and (words.min() < 0 or words.max() >= k):
        raise ValueError(f"visual word ids outside 0..{k - 1} in the index's entries (rows {lo}..{hi - 1})")
    order = np.argsort(words, kind="stable")
    offsets = np.searchsorted(words[order], np.arange(k + 1)).astype(np.int64)
    return Segment(lo, hi, offsets, np.asarray(items, np.int64)[order], np.ascontiguousarray(np.asarray(data)[order]))


@dataclass(frozen=True)
class InvertedFile:
    """Immutable posting lists over rows [0, n_rows) in segments; `item_row` (I,) maps a global item to its row,
    `gamma` (I,) its factor."""
    k: int
    dim: int
    binary: bool
    n_rows: int
    segments: tuple[Segment, ...]
    item_row: np.ndarray
    gamma: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.gamma)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.segments) + int(self.item_row.nbytes + self.gamma.nbytes)

    def scores(self, query: Aggregated, *, kernel: str = "asmk", alpha: float = 3.0, tau: float = 0.0,
               chunk: int = 1 << 20) -> np.ndarray:
        """The kernel of the query (one item) with every item: (n_items,) float32. Touches only the query's
        words' posting lists."""
        if query.dim != self.dim or query.binary != self.binary:
            raise ValueError(f"query aggregated as {query.dim}-D {'binary' if query.binary else 'float'}, the index "
                             f"holds {self.dim}-D {'binary' if self.binary else 'float'} entries")
        total = np.zeros(self.n_items, np.float64)
        qw = query.words.astype(np.int64)
        for seg in self.segments:
            starts, ends = seg.offsets[qw], seg.offsets[qw + 1]
            lengths = ends - starts
            n = int(lengths.sum())
            if n == 0:
                continue
            # posting index of every (query word, posting) pair, and the query entry it meets
            qi = np.repeat(np.arange(len(qw)), lengths)
            pos = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
            for a in range(0, n, chunk):
                p, q = pos[a:a + chunk], qi[a:a + chunk]
                u = entry_similarities(query.data[q], seg.data[p], self.dim, self.binary)
                s = match_sigma(u, kernel, alpha, tau)
                total += np.bincount(seg.items[p], weights=s, minlength=self.n_items)
        return (total * self.gamma * float(query.gamma[0])).astype(np.float32)


def _entries(snapshot, rows: np.ndarray, data_column: str, separate: bool):
    """Entries of `rows` from the store: words, global items, data; plus the rows' gamma spans."""
    w_start, w_count = snapshot.spans(WORDS, rows)
    g_start, g_count = snapshot.spans(GAMMA, rows)
    idx = concat_ranges(w_start, w_count)
    words = np.asarray(snapshot.column(WORDS)[idx]) if len(idx) else np.zeros(0, np.int32)
    data = np.asarray(snapshot.column(data_column)[idx]) if len(idx) else None
    if separate:
        local = np.asarray(snapshot.column(ITEM)[idx], dtype=np.int64) if len(idx) else np.zeros(0, np.int64)
    else:
        local = np.zeros(len(idx), np.int64)
    items = np.repeat(g_start, w_count) + local
    return words, items, data, g_start, g_count


def build(snapshot, k: int, *, base: InvertedFile | None = None, separate: bool = False) -> InvertedFile:
    """The inverted file of a store snapshot's committed rows (all of them: tombstones are masked at query time),
    extending `base` (built for a prefix of the rows) with one segment for the new rows."""
    binary = CODES in snapshot.columns
    data_column = CODES if binary else VECTORS
    if WORDS not in snapshot.columns or data_column not in snapshot.columns:
        raise ValueError("this index stores no aggregated local features (its preset's pooling is not 'asmk')")
    n = snapshot.n_rows
    lo = 0 if base is None else base.n_rows
    rows = np.arange(lo, n, dtype=np.int64)
    words, items, data, g_start, g_count = _entries(snapshot, rows, data_column, separate)
    shape = snapshot.columns[data_column].shape
    width = shape[0] if shape and shape[0] else (0 if data is None else data.shape[1])
    dim = width * 8 if binary else width
    if base is not None and base.dim and dim and base.dim != dim:
        raise ValueError(f"entries of {dim} dimensions after {base.dim}-D ones: the index is inconsistent")
    dim = dim or (base.dim if base is not None else 0)
    if data is None:
        data = np.zeros((0, max(width, 1)), np.uint8 if binary else np.float32)
    gamma_all = snapshot.column(GAMMA)
    n_items = snapshot.items[GAMMA]
    item_row = np.full(n_items, -1, np.int64)
    gamma = np.zeros(n_items, np.float32)
    if base is not None:
        item_row[:base.n_items] = base.item_row
        gamma[:base.n_items] = base.gamma
    gi = concat_ranges(g_start, g_count)
    item_row[gi] = np.repeat(rows, g_count)
    gamma[gi] = np.asarray(gamma_all[gi]) if len(gi) else gamma[gi]
    segments = () if base is None else base.segments
    if len(rows):
        segments = segments + (build_segment(words, items, data, k, lo, n),)
    ivf = InvertedFile(k, dim, binary, n, segments, item_row, gamma)
    if len(ivf.segments) > MAX_SEGMENTS:
        return build(snapshot, k, separate=separate)
    return ivf


def from_aggregated(aggregated, k: int) -> InvertedFile:
    """An inverted file over in-memory representations, image i = row i (what `build` makes from a store's
    columns, for benchmarks and tests)."""
    aggregated = list(aggregated)
    if not aggregated:
        raise ValueError("no images to index")
    n_items = np.array([len(a.gamma) for a in aggregated], np.int64)
    item_start = np.concatenate([[0], np.cumsum(n_items)[:-1]])
    words = np.concatenate([a.words for a in aggregated])
    items = np.concatenate([a.items.astype(np.int64) + s for a, s in zip(aggregated, item_start)])
    data = np.concatenate([a.data for a in aggregated])
    binary, dim = aggregated[0].binary, aggregated[0].dim
    segment = build_segment(words, items, data, k, 0, len(aggregated))
    return InvertedFile(k, dim, binary, len(aggregated), (segment,), np.repeat(np.arange(len(aggregated)), n_items),
                        np.concatenate([a.gamma for a in aggregated]).astype(np.float32))


_CACHE: dict[tuple, InvertedFile] = {}
_LOCK = threading.Lock()


def _identity(store) -> tuple:
    """Which store this is: its directory and the identity of its words file (a recreated index is another one)."""
    directory = Path(store.directory).resolve()
    st = os.stat(directory / f"{WORDS}.int32")
    return (str(directory), st.st_dev, st.st_ino)


def _path(store, k: int, separate: bool) -> Path:
    return derived.directory(store) / f"asmk.{k}.{'regions' if separate else 'images'}.bin"


def _load(store, k: int, separate: bool) -> InvertedFile | None:
    """The persisted inverted file (posting lists memory-mapped), if it is this store's and undamaged."""
    got = derived.load(_path(store, k, separate), mmap=True)
    if got is None:
        return None
    arrays, meta = got
    if meta.get("identity") != derived.identity(store) or meta.get("k") != k:
        return None
    try:
        segments = tuple(Segment(lo, hi, arrays[f"s{i}_offsets"], arrays[f"s{i}_items"], arrays[f"s{i}_data"])
                         for i, (lo, hi) in enumerate(meta["segments"]))
        return InvertedFile(k, meta["dim"], meta["binary"], meta["rows"], segments, np.array(arrays["item_row"]),
                            np.array(arrays["gamma"]))
    except (KeyError, TypeError, ValueError):
        return None


def _save(store, ivf: InvertedFile, separate: bool) -> None:
    arrays = {"item_row": ivf.item_row, "gamma": ivf.gamma}
    for i, seg in enumerate(ivf.segments):
        arrays.update({f"s{i}_offsets": seg.offsets, f"s{i}_items": seg.items, f"s{i}_data": seg.data})
    derived.save(_path(store, ivf.k, separate), arrays,
                 {"identity": derived.identity(store), "k": ivf.k, "dim": ivf.dim, "binary": ivf.binary,
                  "rows": ivf.n_rows, "segments": [[s.lo, s.hi] for s in ivf.segments]})


def for_snapshot(snapshot, k: int, *, separate: bool = False) -> InvertedFile:
    """The inverted file of a store snapshot, from the per-store cache: built once (or read from its derived file,
    posting lists memory-mapped, so a new process answers its first query without rebuilding it), extended by a
    segment when rows were appended since, reused as is by older snapshots (which mask out rows they have not
    committed). Saved as derived data when first built and whenever it grew by a twentieth (at least 1,024 rows)."""
    key = _identity(snapshot.store) + (k, separate)
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is None and snapshot.n_rows:
        cached = _load(snapshot.store, k, separate)
        saved = 0 if cached is None else cached.n_rows
    else:
        saved = -1  # this process already holds it: save only when it grew enough since
    if cached is not None and cached.n_rows >= snapshot.n_rows:
        with _LOCK:
            _CACHE.setdefault(key, cached)
        return cached
    ivf = build(snapshot, k, base=cached, separate=separate)
    base_rows = 0 if cached is None else cached.n_rows
    if saved == 0 or ivf.n_rows - base_rows >= max(1024, base_rows // 20):
        _save(snapshot.store, ivf, separate)
    with _LOCK:
        current = _CACHE.get(key)
        if current is None or current.n_rows < ivf.n_rows:
            _CACHE[key] = ivf
    return ivf


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
