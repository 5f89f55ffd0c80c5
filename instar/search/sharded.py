"""Sharded indexes searched as one (`open_index`, `ShardedIndex`).

A `ShardedIndex` opens the shards a manifest lists (`instar.index.shards`: one preset, one fitted model, a
shard with another refused) and looks like one read-only `Index` to search, `instar search`, `instar eval`-style
loops and `instar serve`: shard i's rows are numbered after those of shards 0..i-1, so the rows, their order
and their data are those of one index that stored the shards' images one shard after another.

Searching: each shard runs the preset's filter over its own rows (its own inverted file for ASMK; its own
codes for Hamming), the shards' candidate lists are merged by score (ties by row, as one index orders them),
and the re-ranker and query expansion then run on the merged head, reading what they need of each candidate
from the shard that holds it (`MergedSnapshot`). Hits therefore equal those of one index holding all rows. The
shards' filters read the very snapshots the merged database was built from, so a search sees one consistent
view even while a shard's own writer adds images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..index import Index, ImageRecord, IndexError_
from ..index.shards import Manifest, is_manifest
from .types import Database, Ranking


class MergedSnapshot:
    """The shards' snapshots as one: rows and items of shard i offset by those of the shards before it."""

    def __init__(self, snapshots: Sequence):
        self.parts = list(snapshots)
        self.row_offsets = np.cumsum([0] + [s.n_rows for s in self.parts])
        self.n_rows = int(self.row_offsets[-1])
        self.columns = self.parts[0].columns
        self.items = {c: sum(s.items[c] for s in self.parts) for c in self.columns}
        self._item_offsets = {c: np.cumsum([0] + [s.items[c] for s in self.parts]) for c in self.columns}
        self.removed = np.concatenate([s.removed + off for s, off in zip(self.parts, self.row_offsets)]).astype(np.int64)
        self._columns: dict[str, np.ndarray] = {}
        self.store = None  # no single store: stages that cache per store (ASMK's inverted file) run per shard

    @property
    def n_live(self) -> int:
        return self.n_rows - len(self.removed)

    def live_rows(self) -> np.ndarray:
        return np.concatenate([s.live_rows() + off for s, off in zip(self.parts, self.row_offsets)]).astype(np.int64)

    def column(self, name: str) -> np.ndarray:
        if name not in self._columns:
            self._columns[name] = np.concatenate([s.column(name) for s in self.parts])
        return self._columns[name]

    def _split(self, rows) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(shard, where in `rows`, local rows) for each shard holding some of `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        shard = np.searchsorted(self.row_offsets, rows, side="right") - 1
        return [(i, np.flatnonzero(shard == i), rows[shard == i] - self.row_offsets[i]) for i in np.unique(shard)]

    def spans(self, name: str, rows=None) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(self.n_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        starts, counts = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
        for i, where, local in self._split(rows):
            s, c = self.parts[i].spans(name, local)
            starts[where] = s + self._item_offsets[name][i]
            counts[where] = c
        return starts, counts

    def get(self, name: str, row: int) -> np.ndarray:
        (i, _, (local,)), = self._split([row])
        return self.parts[i].get(name, int(local))

    def row_bytes(self, row: int) -> bytes:
        (i, _, (local,)), = self._split([row])
        return self.parts[i].row_bytes(int(local))


class ShardedFilter:
    """The preset's filter run on every shard's own database, the candidate lists merged by score."""

    def __init__(self, inner, index: "ShardedIndex"):
        self.inner, self.index = inner, index
        self.dbs: list[Database] = []

    def refresh(self) -> None:
        """Each shard's database from the snapshots of the merged database last read (one consistent view)."""
        merged = self.index.latest_snapshot()
        self.dbs = [Database.from_index(_Pinned(shard, part)) for shard, part in zip(self.index.shards, merged.parts)]

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, db: Database, query, k: int) -> Ranking:
        if not self.dbs:
            self.refresh()
        offsets = np.cumsum([0] + [len(d) for d in self.dbs])
        parts = [(self.inner(d, query, k), off) for d, off in zip(self.dbs, offsets) if len(d)]
        positions = np.concatenate([r.positions + off for r, off in parts]).astype(np.int64)
        scores = np.concatenate([r.scores for r, _ in parts]).astype(np.float32)
        boxes = None
        if any(r.boxes is not None for r, _ in parts):
            boxes = np.concatenate([r.boxes if r.boxes is not None else np.full((len(r), 4), np.nan, np.float32)
                                    for r, _ in parts]).astype(np.float32)
        order = np.lexsort((positions, -scores))[:k]  # best score first; equal scores in row order
        return Ranking(positions[order], scores[order], None if boxes is None else boxes[order])


class ShardedIndex:
    """Shards of one model searched as one index (read-only: add to a shard itself, or `instar merge`)."""

    def __init__(self, manifest: Manifest, shards: list[Index]):
        self.manifest, self.shards = manifest, shards
        self.path = manifest.path
        self.extractor = shards[0].extractor
        self._latest: MergedSnapshot | None = None

    @classmethod
    def open(cls, path: Path | str, *, weights_mirror: str | None = None) -> "ShardedIndex":
        manifest = Manifest.read(path)
        return cls(manifest, manifest.open_shards(weights_mirror=weights_mirror))

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def preset(self):
        return self.extractor.preset

    @property
    def dim(self) -> int:
        return max(s.dim for s in self.shards)

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def snapshot(self) -> MergedSnapshot:
        self._latest = MergedSnapshot([s.snapshot() for s in self.shards])
        return self._latest

    def latest_snapshot(self) -> MergedSnapshot:
        """The snapshot `snapshot()` last returned (a new one if none yet)."""
        return self._latest if self._latest is not None else self.snapshot()

    @property
    def vectors(self) -> np.ndarray:
        return self.snapshot().column("global")

    def meta(self, key: str) -> str | None:
        return self.shards[0].meta(key)

    def wrap_filter(self, inner) -> ShardedFilter:
        """The search pipeline's hook: run `inner` on each shard and merge (see the module's docstring)."""
        return ShardedFilter(inner, self)

    def records(self, rows: Iterable[int] | None = None) -> list[ImageRecord]:
        offsets = np.cumsum([0] + [s.snapshot().n_rows for s in self.shards])
        if rows is None:
            return [_shifted(r, off) for s, off in zip(self.shards, offsets) for r in s.records()]
        rows = [int(r) for r in rows]
        out: list[ImageRecord | None] = [None] * len(rows)
        shard_of = np.searchsorted(offsets, rows, side="right") - 1
        for i, s in enumerate(self.shards):
            where = [j for j, sh in enumerate(shard_of) if sh == i]
            for j, rec in zip(where, s.records([rows[j] - int(offsets[i]) for j in where])):
                out[j] = _shifted(rec, int(offsets[i]))
        return out

    def failures(self) -> list[tuple[str, str]]:
        return sorted(f for s in self.shards for f in s.failures())

    def summary(self) -> dict:
        return {"path": str(self.path), "shards": len(self.shards), "images": len(self), "dim": self.dim,
                "preset": self.preset.name, "model": self.manifest.model[:12]}

    def add(self, *args, **kwargs):
        raise IndexError_(f"{self.path}: a sharded index is read-only here; add to one of its shards "
                          "(instar index PHOTOS --out SHARD) or merge them (instar merge)")

    remove = add


class _Pinned:
    """A shard seen through one given snapshot (what `Database.from_index` reads: `snapshot()` and `dim`)."""

    def __init__(self, shard: Index, snapshot):
        self.shard, self._snapshot = shard, snapshot

    def snapshot(self):
        return self._snapshot

    @property
    def dim(self) -> int:
        return self.shard.dim

    @property
    def extractor(self):
        return self.shard.extractor


def _shifted(rec: ImageRecord, offset: int) -> ImageRecord:
    return ImageRecord(rec.id + offset, rec.row + offset, rec.path, rec.name, rec.width, rec.height, rec.sha256)


def open_index(path: Path | str, *, weights_mirror: str | None = None):
    """An index folder (`Index`) or a shard manifest (`ShardedIndex`), opened for searching."""
    if is_manifest(path):
        return ShardedIndex.open(path, weights_mirror=weights_mirror)
    return Index.open(path, weights_mirror=weights_mirror)
