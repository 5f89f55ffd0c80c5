"""Append-only column store: how an instar index keeps its per-image data on disk, safely under crashes and
concurrent readers.

Layout. A store lives in a directory beside an SQLite database (the index's `index.sqlite`):

- a *column* is one append-only file `NAME.DTYPE` (e.g. `global.float32`) of items that all have one dtype
  and one per-item shape. A *fixed* column holds exactly one item per row, row r at byte r * item_bytes; a
  *ragged* column holds 0..n items per row, located by (start, count) in `store_spans`. Examples: the global
  descriptor `Column("global", "float32", (None,))` (fixed; None = the dimension the first append sets),
  region boxes `Column("boxes", "float32", (4,), ragged=True)`, region descriptors
  `Column("regions", "float32", (None,), ragged=True)`, packed binary codes `Column("codes", "uint8", (32,))`,
  visual words of an inverted file `Column("words", "int32", (), ragged=True)`.
- a *row* is one stored item (for an index: one image) named by a `key` (the image's path); rows are numbered
  0, 1, 2, ... in commit order and never reused. At most one row per key is live.

SQLite tables (WAL mode):

    store_columns(name PRIMARY KEY, position, dtype, shape JSON, ragged, file, items)  -- items: committed count
    store_rows(row PRIMARY KEY, key, checksum, committed_at, removed_at NULL)          -- NULL = live
    store_spans(row, col, start, count, PRIMARY KEY (row, col))                        -- ragged columns only

Rules. Every store (global vectors today; regions, binary codes and inverted files later) follows them:

1. SQLite is the commit log. A writer appends a batch's bytes to every column file and fsyncs them FIRST,
   checks that they are still there and unchanged (file size and crc32 read back), and only then runs ONE
   SQLite transaction that inserts the rows (key, crc32 checksum), their spans, and advances each column's
   committed item count. A crash before that transaction leaves an uncommitted tail that nobody sees; a crash
   after it loses nothing. A writer that finds its own bytes gone or changed raises `StoreIntegrityError`
   naming the file and commits nothing.
2. Committed bytes are immutable. Changing an item = tombstone its live row and append a new row, in the same
   transaction; removing = tombstone (`removed_at`); adding a removed key again appends a fresh row. Nothing
   is ever rewritten in place, so a reader's memory maps of committed rows can never change under it.
3. One writer at a time: `Store.writer()` takes an exclusive flock on `.lock` (a second writer gets
   `StoreBusy` at once). Repair -- truncating each column file back to its committed length, which cuts the
   tail an interrupted writer left -- happens only under that lock, at the start of every write.
4. Readers never modify any file (their connection is `query_only`). `Store.snapshot()` reads the committed
   rows in one SQLite read transaction and memory-maps each column only up to its committed length, so bytes a
   writer has appended but not committed are invisible; a snapshot stays valid while writers append. Take a new
   snapshot to see new commits (maps are re-made only when the committed length grew).
5. Each row's crc32 (over its bytes in every column, in column order) is stored with it; `verify()` finds
   committed rows whose bytes no longer match their checksum or are all zero (damage from outside).
6. A column file shorter than its committed length is damage nobody can repair by truncation: opening a
   snapshot or a writer on it raises `StoreIntegrityError` naming the file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

LOCK = ".lock"
TABLES = ("store_columns", "store_rows", "store_spans")

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS store_columns (
    name TEXT PRIMARY KEY,
    position INTEGER UNIQUE NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    ragged INTEGER NOT NULL,
    file TEXT UNIQUE NOT NULL,
    items INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS store_rows (
    row INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    checksum INTEGER NOT NULL,
    committed_at REAL NOT NULL,
    removed_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS store_rows_live_key ON store_rows(key) WHERE removed_at IS NULL;
CREATE INDEX IF NOT EXISTS store_rows_removed ON store_rows(row) WHERE removed_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS store_spans (
    row INTEGER NOT NULL,
    col TEXT NOT NULL,
    start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (row, col)
) WITHOUT ROWID;
"""


class StoreError(RuntimeError):
    """A store (index directory) that cannot be used as asked; the message names the file and the problem."""


class StoreBusy(StoreError):
    """Another process holds the writer's lock."""


class StoreIntegrityError(StoreError):
    """Bytes on disk are not what the commit log says: a file was truncated, replaced or overwritten."""


def connect(path: Path | str, *, create: bool = False) -> sqlite3.Connection:
    """An SQLite connection as the store uses it: explicit transactions, WAL, fsync on commit, read-only until a
    writer lifts `query_only` under the lock."""
    db = sqlite3.connect(str(path), isolation_level=None, timeout=60.0)
    if create:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA query_only=ON")
    return db


@contextlib.contextmanager
def read_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the enclosed SELECTs in one read transaction (one consistent WAL snapshot)."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Column:
    """A column declaration: `shape` is the per-item shape; a None dimension is fixed by the first append.

    Fixed (`ragged=False`): exactly one item per row. Ragged: 0..n items per row, given as an (n, *shape) array.
    """
    name: str
    dtype: str
    shape: tuple[int | None, ...] = ()
    ragged: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"column name {self.name!r}: use lower-case letters, digits and _")
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        if any(d is not None and d < 1 for d in self.shape):
            raise ValueError(f"column {self.name!r}: dimensions must be positive (or None), got {self.shape}")

    @property
    def file(self) -> str:
        return f"{self.name}.{self.dtype}"

    @property
    def resolved(self) -> bool:
        return all(d is not None for d in self.shape)

    @property
    def item_bytes(self) -> int:
        """Bytes per item (0 while a dimension is still open)."""
        if not self.resolved:
            return 0
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)

    def with_shape(self, shape: Sequence[int]) -> "Column":
        return Column(self.name, self.dtype, tuple(shape), self.ragged)


@dataclass(frozen=True)
class Appended:
    """One committed row: its number, key, and the row it replaced (tombstoned in the same transaction)."""
    row: int
    key: str
    replaced: int | None


@dataclass(frozen=True)
class Damage:
    row: int
    key: str
    reason: str


@dataclass
class Staged:
    """Bytes written and fsync'ed but not yet committed (see `Writer.stage` / `Writer.commit`)."""
    first_row: int
    keys: list[str]
    checksums: list[int]
    columns: dict[str, Column]                       # with the shapes this batch resolved
    items_before: dict[str, int]
    items_after: dict[str, int]
    spans: dict[str, list[tuple[int, int]]]          # ragged columns: per row (start, count)
    written: dict[str, tuple[int, int, int]]         # column: (start byte, end byte, crc32 of those bytes)


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
        """(starts, counts) of `rows` (default: all committed rows) in a ragged column."""
        col = self.columns[name]
        rows = np.arange(self.n_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if not col.ragged:
            return rows.copy(), np.ones(len(rows), dtype=np.int64)
        found = {r: (s, c) for r, s, c in self.store.db.execute(
            "SELECT row, start, count FROM store_spans WHERE col = ? AND row < ?", (name, self.n_rows))}
        pairs = [found.get(int(r), (0, 0)) for r in rows]
        return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64))

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

    # --- creation ------------------------------------------------------------------------------
    @staticmethod
    def initialise(directory: Path | str, db: sqlite3.Connection, columns: Sequence[Column]) -> None:
        """Create the store's tables and empty column files (in a directory not yet visible to anyone)."""
        directory = Path(directory)
        db.execute("PRAGMA query_only=OFF")
        try:
            db.executescript(SCHEMA_SQL)
            with _write_transaction(db):
                for i, col in enumerate(columns):
                    _insert_column(db, i, col)
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


def _insert_column(db: sqlite3.Connection, position: int, col: Column) -> None:
    db.execute("INSERT INTO store_columns (name, position, dtype, shape, ragged, file, items) VALUES (?, ?, ?, ?, ?, ?, 0)",
               (col.name, position, col.dtype, json.dumps(list(col.shape)), int(col.ragged), col.file))


@contextlib.contextmanager
def _write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


OnCommit = Callable[[sqlite3.Connection, list], None]


class Writer:
    """What a process holding the store's lock may do: append rows, tombstone rows, declare ragged columns."""

    def __init__(self, store: Store):
        self.store = store
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"{self.store.directory}: the writer was used after its lock was released")

    def transaction(self):
        """One SQLite write transaction, for the caller's own tables (under the lock)."""
        self._check_open()
        return _write_transaction(self.store.db)

    def repair(self) -> None:
        """Cut each column file back to its committed length (bytes of an interrupted write). Only under the lock."""
        self._check_open()
        with read_transaction(self.store.db):
            _, columns, items = self.store._committed()
        self.store._check_files(columns, items)
        for col in columns.values():
            path = self.store.directory / col.file
            need = items[col.name] * col.item_bytes
            size = path.stat().st_size
            if size > need:
                log.info("%s: dropping %d uncommitted bytes of an interrupted write", path, size - need)
                with open(path, "r+b") as f:
                    f.truncate(need)
                    os.fsync(f.fileno())

    def declare(self, column: Column) -> None:
        """Add a column to an existing store: a ragged one at any time (earlier rows hold 0 items), a fixed one
        only while no row is committed."""
        self._check_open()
        if not column.ragged and self.store.db.execute("SELECT COUNT(*) FROM store_rows").fetchone()[0]:
            raise StoreError(f"{self.store.directory}: a fixed column ({column.name!r}) needs one item per row, so it "
                             "can only be declared before the first row is committed")
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM store_columns WHERE name = ?", (column.name,)).fetchone():
                raise StoreError(f"{self.store.directory}: column {column.name!r} already exists")
            position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM store_columns").fetchone()[0]
            path = self.store.directory / column.file
            with open(path, "ab") as f:
                f.truncate(0)
                os.fsync(f.fileno())
            _insert_column(db, position, column)

    def stage(self, items: Sequence[tuple[str, Mapping[str, np.ndarray]]]) -> Staged:
        """Append the items' bytes to every column file and fsync them; nothing is visible until `commit`.

        `items` are (key, {column: array}); a fixed column needs an array of its item shape, a ragged one an
        (n, *shape) array (or nothing, for n = 0).
        """
        self._check_open()
        if not items:
            raise ValueError("nothing to stage")
        self.repair()
        store = self.store
        with read_transaction(store.db):
            n_rows, columns, committed = store._committed()
        per_column: dict[str, list[np.ndarray]] = {name: [] for name in columns}
        for key, arrays in items:
            unknown = set(arrays) - set(columns)
            if unknown:
                raise StoreError(f"{key}: no column named {', '.join(sorted(unknown))} in {store.directory}")
            for name, col in list(columns.items()):
                a = arrays.get(name)
                if a is None:
                    if not col.ragged:
                        raise StoreError(f"{key}: no data for column {name!r}, which holds one item per row")
                    a = np.zeros((0, *(0 if d is None else d for d in col.shape)), dtype=col.dtype)
                a = np.asarray(a)
                item_shape = a.shape[1:] if col.ragged else a.shape
                if col.ragged and a.ndim != len(col.shape) + 1:
                    raise StoreError(f"{key}: column {name!r} takes (n, {', '.join(map(str, col.shape))}) arrays, got {a.shape}")
                if len(item_shape) != len(col.shape) or any(
                        d is not None and d != s for d, s in zip(col.shape, item_shape)):
                    if not (col.ragged and a.shape[0] == 0):
                        raise StoreError(f"{key}: column {name!r} holds items of shape {col.shape}, got {item_shape}")
                if not col.resolved and (not col.ragged or a.shape[0] > 0):
                    col = col.with_shape(tuple(s if d is None else d for d, s in zip(col.shape, item_shape)))
                    columns[name] = col
                if not np.can_cast(a.dtype, col.dtype, casting="same_kind"):
                    raise StoreError(f"{key}: column {name!r} holds {col.dtype}, got {a.dtype}")
                if col.ragged and a.shape[0] == 0:
                    a = np.zeros((0, *(0 if d is None else d for d in col.shape)), dtype=col.dtype)
                per_column[name].append(np.ascontiguousarray(a, dtype=col.dtype))
        checksums = []
        for i in range(len(items)):
            crc = 0
            for name in columns:
                crc = zlib.crc32(per_column[name][i].tobytes(), crc)
            checksums.append(crc)
        spans: dict[str, list[tuple[int, int]]] = {}
        items_after: dict[str, int] = {}
        written: dict[str, tuple[int, int, int]] = {}
        for name, col in columns.items():
            arrays = per_column[name]
            if col.ragged:
                start = committed[name]
                spans[name] = []
                for a in arrays:
                    spans[name].append((start, len(a)))
                    start += len(a)
                items_after[name] = start
            else:
                items_after[name] = committed[name] + len(arrays)
            data = b"".join(a.tobytes() for a in arrays)
            begin = committed[name] * col.item_bytes
            path = store.directory / col.file
            with open(path, "r+b") as f:
                f.seek(begin)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            written[name] = (begin, begin + len(data), zlib.crc32(data))
        return Staged(n_rows, [k for k, _ in items], checksums, columns, committed, items_after, spans, written)

    def _check_written(self, staged: Staged) -> None:
        for name, (begin, end, crc) in staged.written.items():
            path = self.store.directory / staged.columns[name].file
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    f.seek(begin)
                    data = f.read(end - begin)
            except FileNotFoundError:
                raise StoreIntegrityError(f"{path}: disappeared after rows {staged.first_row}.."
                                          f"{staged.first_row + len(staged.keys) - 1} were written; nothing was committed") from None
            if size < end or len(data) != end - begin:
                raise StoreIntegrityError(f"{path}: holds {size} bytes but the rows just written end at byte {end}: "
                                          "another process truncated or replaced it; nothing was committed")
            if zlib.crc32(data) != crc:
                raise StoreIntegrityError(f"{path}: the bytes of rows {staged.first_row}.."
                                          f"{staged.first_row + len(staged.keys) - 1} changed between writing and "
                                          "commit (checksum mismatch); nothing was committed")

    def commit(self, staged: Staged, on_commit: OnCommit | None = None) -> list[Appended]:
        """Make staged rows visible in ONE transaction (tombstoning the live row of each key they replace), after
        checking their bytes are still on disk unchanged. `on_commit(db, appended)` runs inside that transaction."""
        self._check_open()
        self._check_written(staged)
        now = time.time()
        with self.transaction() as db:
            n_rows, _, items = self.store._committed()
            if n_rows != staged.first_row or items != staged.items_before:
                raise StoreIntegrityError(f"{self.store.directory}: rows were committed by someone else while this "
                                          "writer held the lock; nothing was committed")
            appended = []
            for i, key in enumerate(staged.keys):
                row = staged.first_row + i
                old = db.execute("SELECT row FROM store_rows WHERE key = ? AND removed_at IS NULL", (key,)).fetchone()
                if old is not None:
                    db.execute("UPDATE store_rows SET removed_at = ? WHERE row = ?", (now, old[0]))
                db.execute("INSERT INTO store_rows (row, key, checksum, committed_at) VALUES (?, ?, ?, ?)",
                           (row, key, staged.checksums[i], now))
                for name, pairs in staged.spans.items():
                    start, count = pairs[i]
                    if count:
                        db.execute("INSERT INTO store_spans (row, col, start, count) VALUES (?, ?, ?, ?)",
                                   (row, name, start, count))
                appended.append(Appended(row, key, None if old is None else old[0]))
            for name, col in staged.columns.items():
                db.execute("UPDATE store_columns SET items = ?, shape = ? WHERE name = ?",
                           (staged.items_after[name], json.dumps(list(col.shape)), name))
            if on_commit is not None:
                on_commit(db, appended)
        return appended

    def append(self, items: Sequence[tuple[str, Mapping[str, np.ndarray]]],
               on_commit: OnCommit | None = None) -> list[Appended]:
        """`stage` then `commit`: the rows are durable and visible when this returns."""
        return self.commit(self.stage(items), on_commit)

    def remove(self, rows: Sequence[int], on_commit: OnCommit | None = None) -> int:
        """Tombstone live rows (their bytes stay; search and snapshots' live rows no longer include them)."""
        self._check_open()
        rows = sorted({int(r) for r in rows})
        if not rows:
            return 0
        now = time.time()
        with self.transaction() as db:
            n = 0
            for chunk in range(0, len(rows), 500):
                part = rows[chunk:chunk + 500]
                n += db.execute(f"UPDATE store_rows SET removed_at = ? WHERE removed_at IS NULL AND row IN "
                                f"({','.join('?' * len(part))})", (now, *part)).rowcount
            if on_commit is not None:
                on_commit(db, rows)
        return n
