"""Sharded indexes searched as one (`open_index`, `ShardedIndex`).

A `ShardedIndex` opens the shards a manifest lists (`instar.index.shards`: one preset, one fitted model, a
shard with another refused) and looks like one `Index` to search, `instar search`, `instar eval` and
`instar serve`: shard i's rows are numbered after those of shards 0..i-1, so the rows, their order and their
data are those of one index that stored the shards' images one shard after another. Those row numbers shift
when an earlier shard grows, so a record's `id` is stable instead: its row in its shard times the number of
shards, plus the shard (`records_by_id`). `add` and `remove` go to the writer of the shard that owns each image
(the one storing that file, else `shard_of` its stored name).

Searching: each shard runs the preset's filter over its own rows (its own inverted file for ASMK; its own
codes for Hamming), the shards' candidate lists are merged by score (ties by row, as one index orders them),
and the re-ranker and query expansion then run on the merged head, reading what they need of each candidate
from the shard that holds it (`MergedSnapshot`). Hits therefore equal those of one index holding all rows. The
shards' filters read the very snapshots the merged database was built from, so a search sees one consistent
view even while a shard's own writer adds images.
"""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..index import AddReport, Index, ImageRecord, IndexError_
from ..index.shards import Manifest, is_manifest, split_paths
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
    """Shards of one model searched as one index; `add` and `remove` go to the shard that owns each image."""

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
        """The shards' current snapshots as one; the last one again while no shard has committed or removed a
        row since (committed rows never change), so its merged columns are not concatenated again per search."""
        parts = [s.snapshot() for s in self.shards]
        last = self._latest
        if last is None or any(p.n_rows != q.n_rows or not np.array_equal(p.removed, q.removed)
                               for p, q in zip(parts, last.parts)):
            self._latest = MergedSnapshot(parts)
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

    # --- ids ----------------------------------------------------------------------------------------
    # A row number of the merged view shifts when an earlier shard grows, so what the records call `id` (what
    # `instar serve` and `instar search --json` show) is stable instead: local row * number of shards + shard.
    def _offsets(self, fresh: bool) -> np.ndarray:
        if fresh:
            return np.cumsum([0] + [s.snapshot().n_rows for s in self.shards])
        return self.latest_snapshot().row_offsets

    def _record(self, rec: ImageRecord, shard: int, offsets) -> ImageRecord:
        return ImageRecord(rec.row * len(self.shards) + shard, rec.row + int(offsets[shard]), rec.path, rec.name,
                           rec.width, rec.height, rec.sha256)

    def records(self, rows: Iterable[int] | None = None) -> list[ImageRecord]:
        """As `Index.records`: `rows` numbered as in the snapshot last taken (`latest_snapshot`, what a search
        ranked); None: every live image, in merged row order."""
        if rows is None:
            parts = [s.snapshot().n_rows for s in self.shards]
            offsets = np.cumsum([0] + parts)
            return [self._record(r, i, offsets) for i, s in enumerate(self.shards) for r in s.records()
                    if r.row < parts[i]]  # a row committed since the count belongs to the next view
        offsets = self._offsets(fresh=False)
        rows = [int(r) for r in rows]
        out: list[ImageRecord | None] = [None] * len(rows)
        owner = np.searchsorted(offsets, rows, side="right") - 1
        for i, s in enumerate(self.shards):
            where = [j for j, sh in enumerate(owner) if sh == i]
            for j, rec in zip(where, s.records([rows[j] - int(offsets[i]) for j in where])):
                out[j] = self._record(rec, i, offsets)
        return out

    def records_by_id(self, ids: Iterable[int]) -> list[ImageRecord]:
        """The records of stable ids (KeyError for an id no shard holds)."""
        n, offsets, out = len(self.shards), self._offsets(fresh=True), []
        for image_id in ids:
            shard, local = int(image_id) % n, int(image_id) // n
            (rec,) = self.shards[shard].records([local])
            out.append(self._record(rec, shard, offsets))
        return out

    def live_record(self, path: str) -> ImageRecord | None:
        """The live image stored under file path `path` (in whichever shard holds it), or None."""
        for shard, s in enumerate(self.shards):  # one lookup per shard, stopping at the holder
            rec = s.live_record(path)
            if rec is not None:
                return self._record(rec, shard, self._offsets(True))
        return None

    def _holder(self, path: str) -> int | None:
        return next((i for i, s in enumerate(self.shards) if s.live_record(path) is not None), None)

    def failures(self) -> list[tuple[str, str]]:
        return sorted(f for s in self.shards for f in s.failures())

    def summary(self) -> dict:
        return {"path": str(self.path), "shards": len(self.shards), "images": len(self), "dim": self.dim,
                "preset": self.preset.name, "model": self.manifest.model[:12]}

    # --- writing: each image through the writer of the shard that owns it ----------------------------
    def another(self) -> "ShardedIndex":
        """A second handle (each shard's `another()`: its own SQLite connections), for another thread."""
        return ShardedIndex(self.manifest, [s.another() for s in self.shards])

    @contextmanager
    def writing(self):
        """Every shard's writer lock, taken in shard order (StoreBusy if another process holds one)."""
        with ExitStack() as stack:
            for s in self.shards:
                stack.enter_context(s.writing())
            yield self

    def add(self, paths: Iterable[Path | str], *, root: Path | str | None = None, **options) -> AddReport:
        """`Index.add` with each file stored by the shard that owns it: the shard already storing that file,
        else the one `shard_of` its stored name names (as `instar index --shards` and Ray place images)."""
        report = AddReport()
        parts = split_paths(list(paths), root, len(self.shards), self._holder)
        for shard, part in zip(self.shards, parts):
            if part:
                got = shard.add(part, root=root, **options)
                report.added += got.added
                report.updated += got.updated
                report.unchanged += got.unchanged
                report.failed.extend(got.failed)
        return report

    def remove(self, names_or_paths: Iterable[str | Path]) -> list[ImageRecord]:
        """`Index.remove` across the shards: each name or path removed from the shard holding it; all must be
        held by one (otherwise nothing is removed)."""
        wanted = [str(x) for x in names_or_paths]
        with self.writing():
            offsets = self._offsets(fresh=True)
            live = [(i, r) for i, s in enumerate(self.shards) for r in s.records()]
            by_key = {}
            for i, r in live:
                by_key.setdefault(r.path, i)
                by_key.setdefault(r.name, i)
            parts: dict[int, list[str]] = {}
            for x in wanted:
                i = by_key.get(x, by_key.get(os.path.abspath(x)))
                if i is None:
                    raise IndexError_(f"{x}: not in the sharded index {self.path}; nothing was removed")
                parts.setdefault(i, []).append(x)
            return [self._record(r, i, offsets) for i, xs in sorted(parts.items()) for r in self.shards[i].remove(xs)]


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


def open_index(path: Path | str, *, weights_mirror: str | None = None):
    """An index folder (`Index`) or a shard manifest (`ShardedIndex`), opened for searching."""
    if is_manifest(path):
        return ShardedIndex.open(path, weights_mirror=weights_mirror)
    return Index.open(path, weights_mirror=weights_mirror)
