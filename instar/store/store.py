"""Reading a store: `Store` (open, snapshot, verify, take the writer's lock) and `Snapshot` (committed rows, memory-mapped)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import sqlite3
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .schema import (LOCK, SCHEMA_SQL, Column, Damage, StoreBusy, StoreIntegrityError, insert_column, read_transaction,
                     write_transaction)
from . import offsets
from .writer import Writer

log = logging.getLogger(__name__)


class Snapshot:
    """A consistent, read-only view of the committed rows; valid for as long as it is held."""

    def __init__(self, store: "Store", n_rows: int, columns: dict[str, Column], items: dict[str, int],
                 removed: np.ndarray):
        self.store = store
        self.n_rows = n_rows
        self.columns = columns
        self.items = items
        self.removed = removed
        self._live: np.ndarray | None = None

    def live_rows(self) -> np.ndarray:
        """Rows not removed, ascending (int64)."""
        if self._live is None:
            rows = np.arange(self.n_rows, dtype=np.int64)
            self._live = rows if len(self.removed) == 0 else np.setdiff1d(rows, self.removed, assume_unique=True)
        return self._live

    @property
    def n_live(self) -> int:
        return self.n_rows - len(self.removed)

    def column(self, name: str) -> np.ndarray:
        """The committed items of a column as a read-only (items, *shape) memory map: for a fixed column row r
        is item r; a ragged column's rows are located with `spans`."""
        return self.store._map(self.columns[name], self.items[name])

    def spans(self, name: str, rows: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(starts, counts) of `rows` (default: all committed rows) in a ragged column: from the derived offsets
        (`instar.store.offsets`: memory, then a checked file, then only the newest spans from SQLite)."""
        col = self.columns[name]
        every = rows is None
        rows = np.arange(self.n_rows, dtype=np.int64) if every else np.asarray(rows, dtype=np.int64)
        if not col.ragged:
            return rows.copy(), np.ones(len(rows), dtype=np.int64)
        starts, counts = offsets.spans(self.store, name, self.n_rows)
        return (starts, counts) if every else (starts[rows], counts[rows])

    def get(self, name: str, row: int) -> np.ndarray:
        """One row's data in a column: the item (fixed) or its (count, *shape) items (ragged)."""
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} is not committed in this snapshot ({self.n_rows} rows)")
        data = self.column(name)
        if not self.columns[name].ragged:
            return data[row]
        (start,), (count,) = self.spans(name, [row])
        return data[start:start + count]

    def row_bytes(self, row: int) -> bytes:
        """A row's bytes in every column, in column order: what its checksum covers."""
        return b"".join(np.ascontiguousarray(self.get(c, row)).tobytes() for c in self.columns)


class Store:
    """Named append-only columns in a directory, committed through SQLite; see the module docstring for the rules."""

    def __init__(self, directory: Path | str, db: sqlite3.Connection):
        self.directory = Path(directory)
        self.db = db
        self._maps: dict[str, np.ndarray] = {}
        self._writer: Writer | None = None
        self.offsets_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # ragged column -> (starts, counts)

    # --- creation ------------------------------------------------------------------------------
    @staticmethod
    def initialise(directory: Path | str, db: sqlite3.Connection, columns: Sequence[Column]) -> None:
        """Create the store's tables and empty column files (in a directory not yet visible to anyone)."""
        directory = Path(directory)
        db.execute("PRAGMA query_only=OFF")
        try:
            db.executescript(SCHEMA_SQL)
            with write_transaction(db):
                for i, col in enumerate(columns):
                    insert_column(db, i, col)
        finally:
            db.execute("PRAGMA query_only=ON")
        for col in columns:
            (directory / col.file).touch()
        (directory / LOCK).touch()

    # --- reading -------------------------------------------------------------------------------
    def _columns(self) -> dict[str, Column]:
        out = {}
        for name, dtype, shape, ragged in self.db.execute(
                "SELECT name, dtype, shape, ragged FROM store_columns ORDER BY position"):
            out[name] = Column(name, dtype, tuple(json.loads(shape)), bool(ragged))
        return out

    def _committed(self) -> tuple[int, dict[str, Column], dict[str, int]]:
        n_rows = self.db.execute("SELECT COALESCE(MAX(row) + 1, 0) FROM store_rows").fetchone()[0]
        items = dict(self.db.execute("SELECT name, items FROM store_columns"))
        return n_rows, self._columns(), items

    def _check_files(self, columns: dict[str, Column], items: dict[str, int]) -> None:
        for col in columns.values():
            path = self.directory / col.file
            need = items[col.name] * col.item_bytes
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise StoreIntegrityError(f"{path}: missing; the index needs it for {items[col.name]} committed "
                                          f"items of column {col.name!r}") from None
            if size < need:
                raise StoreIntegrityError(f"{path}: holds {size} bytes but the {items[col.name]} committed items of "
                                          f"column {col.name!r} need {need}; the file was truncated or replaced "
                                          "(rebuild the index)")

    def snapshot(self) -> Snapshot:
        """The committed state, read in one SQLite read transaction; column files are checked, never modified."""
        with read_transaction(self.db):
            n_rows, columns, items = self._committed()
            removed = np.fromiter((r for (r,) in self.db.execute(
                "SELECT row FROM store_rows WHERE removed_at IS NOT NULL ORDER BY row")), dtype=np.int64)
        self._check_files(columns, items)
        return Snapshot(self, n_rows, columns, items, removed)

    def _map(self, col: Column, items: int) -> np.ndarray:
        shape = tuple(0 if d is None else d for d in col.shape)
        if items == 0:
            return np.zeros((0, *shape), dtype=col.dtype)
        cached = self._maps.get(col.name)
        if cached is None or cached.shape[0] < items or cached.shape[1:] != shape:
            cached = np.memmap(self.directory / col.file, dtype=col.dtype, mode="r", shape=(items, *shape))
            self._maps[col.name] = cached
        return cached[:items]

    def live_row(self, key: str) -> int | None:
        row = self.db.execute("SELECT row FROM store_rows WHERE key = ? AND removed_at IS NULL", (key,)).fetchone()
        return None if row is None else row[0]

    def live_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM store_rows WHERE removed_at IS NULL").fetchone()[0]

    def verify(self, rows: Sequence[int] | np.ndarray | None = None, snapshot: Snapshot | None = None) -> list[Damage]:
        """Committed rows (default: the live ones) whose bytes no longer match their checksum, or are all zero."""
        snap = snapshot or self.snapshot()
        rows = snap.live_rows() if rows is None else np.asarray(rows, dtype=np.int64)
        stored = {r: (k, c) for r, k, c in self.db.execute(
            "SELECT row, key, checksum FROM store_rows WHERE row < ?", (snap.n_rows,))}
        spans = {name: dict(zip(range(snap.n_rows), zip(*snap.spans(name)))) for name, col in snap.columns.items()
                 if col.ragged}
        data = {name: snap.column(name) for name in snap.columns}
        damaged = []
        for r in rows.tolist():
            parts = []
            for name, col in snap.columns.items():
                if col.ragged:
                    start, count = spans[name][r]
                    parts.append(np.ascontiguousarray(data[name][start:start + count]).tobytes())
                else:
                    parts.append(np.ascontiguousarray(data[name][r]).tobytes())
            blob = b"".join(parts)
            key, checksum = stored[r]
            if blob and not blob.strip(b"\0"):
                damaged.append(Damage(r, key, "its stored bytes are all zero"))
            elif zlib.crc32(blob) != checksum:
                damaged.append(Damage(r, key, f"checksum mismatch (stored {checksum:08x}, found {zlib.crc32(blob):08x})"))
        return damaged

    # --- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self) -> Iterator["Writer"]:
        """Exclusive write access: flock on `.lock`, then repair (cut uncommitted tails). Re-entrant in a process."""
        if self._writer is not None:
            yield self._writer
            return
        lock_path = self.directory / LOCK
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusy(f"{self.directory}: another process is writing to this index (it holds {lock_path}); "
                                "wait for it to finish") from None
            self.db.execute("PRAGMA query_only=OFF")
            writer = Writer(self)
            self._writer = writer
            try:
                writer.repair()
                yield writer
            finally:
                self._writer = None
                writer.closed = True
                self.db.execute("PRAGMA query_only=ON")


