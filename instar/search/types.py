"""The search vocabulary: what the filter, re-rank and expansion stages (`[filter]`, `[rerank]`, `[expansion]`)
work on, and the `Hit`s a search returns.

- `Database`: one consistent snapshot of the index's live images -- their store rows, global vectors, and (when
  the preset stores them) a `RegionTable` of every image's region boxes and descriptors;
- `Query`: what a stage may ask of the query -- its global `vector` (of the query crop, as the benchmarks'
  protocol describes queries), the crop's `features`, `box_descriptor` (the query box pooled on the whole query
  image's map like the stored regions, Salvador et al.'s CA-SR query), each computed on first use, `memo` for
  what a stage derives from them (a local-feature kernel's aggregated query, shared with the expanded query), and
  `cached(name, fn)` for what depends on the global vector (e.g. its binary codes: dropped by `with_vector`);
  per-snapshot data a stage derives are kept with `db.cached`;
- `Ranking`: database positions (indices into `Database.rows`) best first, their scores, and where known the
  box (x0, y0, x1, y1, original pixels) of the object in each.

A filter ranks the database (`filter(db, query, k) -> Ranking`); a re-ranker re-scores the head of a ranking
(`rerank(db, query, ranking) -> Ranking`) and may `localise` any ranking's images; an expansion builds a new
query from the top of a ranking and searches again (`expansion(db, query, ranking, k) -> Ranking`). An expansion
that refines the filter's list before the re-ranker sees it (DRH's gQE, applied "after the gDRH and before the
lDRH") also has `before_rerank(db, query, ranking) -> Ranking`, which the pipeline calls between the two.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss
import numpy as np

from ..extract.images import check_box, load_image
from ..store.columns import BOXES, GLOBAL, REGION_PQ, REGIONS


@dataclass
class Hit:
    """One ranked result. `box` is where the object is in the image, (x0, y0, x1, y1) original pixels; a
    preset that does not localise (global descriptors only) gives the whole image."""
    rank: int
    score: float
    row: int
    id: int
    name: str
    path: str
    box: tuple[float, float, float, float]


@dataclass
class Ranking:
    """positions (K,) int64 into `Database.rows`, best first; scores (K,) float32; boxes (K, 4) float32 or None."""
    positions: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def head(self, n: int) -> "Ranking":
        return Ranking(self.positions[:n], self.scores[:n], None if self.boxes is None else self.boxes[:n])

    def rescore_head(self, scores: np.ndarray, boxes: np.ndarray | None = None) -> "Ranking":
        """The first m = len(scores) re-scored by `scores` (m,) and re-ordered by them, best first (stable: equal
        scores keep their order); the tail kept as it is. `boxes` (m, 4) replace the head's boxes (the tail keeps
        its own, NaN where it has none); without them the ranking's own boxes follow their images."""
        m = len(scores)
        order = np.argsort(-np.asarray(scores), kind="stable")
        positions = np.concatenate([self.positions[:m][order], self.positions[m:]])
        all_scores = np.concatenate([np.asarray(scores)[order], self.scores[m:]]).astype(np.float32)
        head = boxes if boxes is not None else (None if self.boxes is None else self.boxes[:m])
        if head is None:
            return Ranking(positions, all_scores)
        tail = self.boxes[m:] if self.boxes is not None else np.full((len(self) - m, 4), np.nan, np.float32)
        return Ranking(positions, all_scores, np.concatenate([np.asarray(head, np.float32)[order], tail]))


@dataclass
class RegionTable:
    """Every database image's regions: for position i, items starts[i] .. starts[i] + counts[i] of `boxes`
    (T, 4) float32 original pixels and `descriptors` (T, Dr) float32 (memory maps of the index's columns), or,
    for a compact-regions coding (`coding.method` pq / opq), their `compact` (T, m) uint8 codes, which its
    `quantiser` scores by ADC (`instar.extract.product_quantisation`)."""
    starts: np.ndarray
    counts: np.ndarray
    boxes: np.ndarray
    descriptors: np.ndarray | None   # None: the index keeps only region codes (coding.keep_float_regions = false)
    compact: np.ndarray | None = None
    quantiser: Any = None

    def similarities(self, positions: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inner products of `q` (Dr,) with every region of `positions` (exact, or by ADC over compact codes when
        the index keeps no float descriptors), grouped by owner in order, and the item ids: (M,) float32, (M,)
        int64. Reads each image's regions as one slice of the memory map (no gather copy); a run of images stored
        back to back is read as one slice."""
        if self.descriptors is None and self.compact is not None:
            table = self.quantiser.table(q)
            return self._runs(positions, lambda lo, hi: self.quantiser.scores(table, self.compact[lo:hi]))
        return self._runs(positions, lambda lo, hi: np.asarray(self.descriptors[lo:hi] @ q, dtype=np.float32))

    def _runs(self, positions: np.ndarray, score: Callable[[int, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        starts, counts = self.starts[positions], self.counts[positions]
        ends = starts + counts
        # split into runs where the next image's regions start where the previous ones end
        breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        sims, items = [], []
        for a, b in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(positions)]])):
            if b > a:
                lo, hi = int(starts[a]), int(ends[b - 1])
                sims.append(score(lo, hi))
                items.append(np.arange(lo, hi, dtype=np.int64))
        if not sims:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return np.concatenate(sims), np.concatenate(items)

    @property
    def nbytes(self) -> int:
        return int(self.boxes.nbytes + sum(0 if a is None else a.nbytes for a in (self.descriptors, self.compact)))


@dataclass
class Database:
    """What search stages read: store `rows` (N,) ascending (a position is an index into them), their global
    `vectors` (N, D) float32 (the store's memory map, never a copy), their `regions` (a `RegionTable`, or None when
    the preset stores no regions), and `removed` (N,) bool: positions of removed images, which every filter masks
    out (None: none removed). Nothing here is proportional to N per request beyond the arrays' views."""
    rows: np.ndarray
    vectors: np.ndarray
    regions: RegionTable | None = None
    snapshot: object | None = None  # the index's store Snapshot, for stages that read other columns
    cache: dict = field(default_factory=dict, repr=False)
    removed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def n_live(self) -> int:
        """Positions a filter may return (not removed)."""
        if self.removed is None:
            return len(self.rows)
        return self.cached("n_live", lambda: len(self.rows) - int(np.count_nonzero(self.removed)))

    def live_positions(self) -> np.ndarray:
        """Positions not removed, ascending (computed once per database)."""
        if self.removed is None:
            return self.cached("live", lambda: np.arange(len(self.rows), dtype=np.int64))
        return self.cached("live", lambda: np.flatnonzero(~self.removed).astype(np.int64))

    def cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """What `compute()` returns, computed once per snapshot (e.g. a column of the live rows)."""
        if name not in self.cache:
            self.cache[name] = compute()
        return self.cache[name]

    @classmethod
    def from_index(cls, index) -> "Database":
        """One consistent snapshot of an `instar.Index`: positions are its store rows, removed ones masked (no
        copy of any column; region offsets from the store's derived offsets, not per-row SQLite reads)."""
        snap = index.snapshot()
        n = snap.n_rows
        if n == 0:
            return cls(np.zeros(0, np.int64), np.zeros((0, max(index.dim, 1)), np.float32))
        removed = None
        if len(snap.removed):
            removed = np.zeros(n, bool)
            removed[snap.removed] = True
        regions = None
        if BOXES in snap.columns:   # descriptors may be absent: a coding that keeps only the region codes
            starts, counts = snap.spans(BOXES)
            descriptors = snap.column(REGIONS) if REGIONS in snap.columns else None
            compact, quantiser = None, None
            if REGION_PQ in snap.columns:  # compact regions: scored by the index's coding stage
                compact, quantiser = snap.column(REGION_PQ), index.extractor.coding
            regions = RegionTable(starts, counts, snap.column(BOXES), descriptors, compact, quantiser)
        return cls(_row_numbers(n), snap.column(GLOBAL), regions, snap, removed=removed)

    def require_regions(self, who: str, descriptors: bool = False, compact: bool = False) -> RegionTable:
        """The region table; `descriptors`: the caller also reads the float region descriptors (`compact`: or
        only their `similarities`, which compact codes give)."""
        if self.regions is None:
            raise ValueError(f"{who} needs region descriptors, but this index stores none "
                             "(its preset has region_pooling.method = 'none')")
        if descriptors and compact and self.regions.compact is not None:
            return self.regions
        if descriptors and self.regions.descriptors is None and self.regions.compact is not None:
            raise ValueError(f"{who} reads float region descriptors, but this index keeps only their product-"
                             "quantisation codes (its preset has coding.method = 'pq' or 'opq')")
        if descriptors and self.regions.descriptors is None:
            raise ValueError(f"{who} compares float region descriptors, but this index keeps only region codes and "
                             "boxes (its preset has coding.keep_float_regions = false)")
        return self.regions


class Query:
    """A query for the search stages; each representation is computed on first use.

    From an image file (optionally a `box` on it, original pixels), or from a ready (D,) `vector`.
    """

    def __init__(self, extractor=None, image: Path | str | None = None, box: Sequence[float] | None = None,
                 vector: np.ndarray | None = None):
        self.extractor, self.image, self.box = extractor, image, box
        self._cache: dict[str, Any] = {}  # derived from the vector (cached): not kept by with_vector
        self._memo: dict = {}  # derived from the image / features (memo): shared with with_vector's query
        if vector is not None:
            self.__dict__["vector"] = np.asarray(vector, dtype=np.float32)

    def cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """A representation a stage derives from the query (e.g. its binary codes), computed once by `compute()`.
        Dropped by `with_vector`, since it may depend on the vector."""
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    @cached_property
    def original(self):
        """The query image as loaded (EXIF-rotated RGB, full size): decoded once for every representation."""
        if self.image is None:
            raise ValueError("this query is a ready descriptor: it has no image to describe")
        return load_image(self.image)

    @cached_property
    def prepared(self):
        """The query crop as the extractor describes it (cropped at full resolution, shrunk): a PIL image."""
        return self.extractor.prepare_loaded(self.original, self.box, path=self.image)

    @cached_property
    def features(self):
        """The query crop's features (maps per scale, or local features), computed once for every stage."""
        return self.extractor.features(self.prepared)

    @cached_property
    def vector(self) -> np.ndarray:
        """(D,) float32: the global descriptor of the query crop."""
        return self.extractor.describe_image(self.prepared, self.features)

    def memo(self, key, compute):
        """A representation of the query a stage derives (e.g. its aggregated local features), computed on first
        use and shared with the other stages (and with the expanded query)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @cached_property
    def box_descriptor(self) -> np.ndarray:
        """(Dr,) float32: the query box (whole image if none) pooled on the whole query image's map like the
        stored regions (Salvador et al. sec. 3.3, CA-SR's query)."""
        if self.image is None:
            raise ValueError("a region descriptor of the query needs the query image, not only a ready descriptor")
        original = self.original
        full = self.extractor.prepare_loaded(original, path=self.image)
        if self.box is None:
            box = (0.0, 0.0, float(full.width), float(full.height))
        else:
            x0, y0, x1, y1 = check_box(self.box, original.width, original.height, source=f"{self.image}: box")
            sx, sy = full.width / original.width, full.height / original.height
            box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        return self.extractor.describe_box(full, box)

    def with_vector(self, vector: np.ndarray) -> "Query":
        """The same query with another global vector (query expansion), keeping its other representations."""
        q = Query(self.extractor, self.image, self.box, vector)
        for name in ("box_descriptor", "original", "prepared", "features"):
            if name in self.__dict__:
                q.__dict__[name] = self.__dict__[name]
        q._memo = self._memo
        return q


def knn(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum inner product search: (N, D) database, (Q, D) queries -> scores (Q, k'), rows (Q, k'), k' = min(k, N)."""
    n = vectors.shape[0]
    k = min(int(k), n)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if k == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    scores, rows = faiss.knn(q, np.ascontiguousarray(vectors, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, rows.astype(np.int64)


_ROWS = np.zeros(0, np.int64)


def _row_numbers(n: int) -> np.ndarray:
    """0..n-1 as a read-only view of one process-wide array, grown as indexes grow (not made per request)."""
    global _ROWS
    rows = _ROWS
    if len(rows) < n:
        rows = np.arange(max(n, 2 * len(rows)), dtype=np.int64)
        rows.flags.writeable = False
        _ROWS = rows
    return rows[:n]


def masked_knn(vectors: np.ndarray, vector: np.ndarray, k: int, removed: np.ndarray | None,
               block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of one query over `vectors` (N, D) with the `removed` (N,) positions excluded
    (their scores set to -inf, block by block: no copy of the live vectors): scores (k',), positions (k',), best
    first, equal scores by position."""
    if removed is None:
        scores, positions = knn(vectors, vector[None, :], k)
        return scores[0], positions[0]
    k = min(int(k), len(vectors) - int(np.count_nonzero(removed)))
    q = np.asarray(vector, np.float32)
    if k <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    keep_s, keep_p = [], []
    for lo in range(0, len(vectors), block):
        s = np.asarray(vectors[lo:lo + block], np.float32) @ q
        s[removed[lo:lo + block]] = -np.inf
        if len(s) > k:
            part = np.argpartition(-s, k - 1)[:k]
        else:
            part = np.arange(len(s))
        keep_s.append(s[part])
        keep_p.append(part + lo)
    scores, positions = np.concatenate(keep_s), np.concatenate(keep_p).astype(np.int64)
    order = np.lexsort((positions, -scores))[:k]
    return scores[order].astype(np.float32), positions[order]
