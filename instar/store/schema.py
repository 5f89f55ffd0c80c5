"""The store's on-disk schema: SQLite tables, column declarations, errors, connections and transactions."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

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


def insert_column(db: sqlite3.Connection, position: int, col: Column) -> None:
    db.execute("INSERT INTO store_columns (name, position, dtype, shape, ragged, file, items) VALUES (?, ?, ?, ?, ?, ?, 0)",
               (col.name, position, col.dtype, json.dumps(list(col.shape)), int(col.ragged), col.file))


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


