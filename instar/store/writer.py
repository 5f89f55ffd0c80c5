"""Writing a store: the one `Writer` that holds the lock appends, tombstones and repairs (rules 1-3 of `instar.store`)."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np

from .schema import (Appended, Column, Staged, StoreError, StoreIntegrityError, insert_column, read_transaction,
                     write_transaction)

log = logging.getLogger(__name__)

OnCommit = Callable[[sqlite3.Connection, list], None]


class Writer:
    """What a process holding the store's lock may do: append rows, tombstone rows, declare ragged columns."""

    def __init__(self, store):
        self.store = store
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"{self.store.directory}: the writer was used after its lock was released")

    def transaction(self):
        """One SQLite write transaction, for the caller's own tables (under the lock)."""
        self._check_open()
        return write_transaction(self.store.db)

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
            insert_column(db, position, column)

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
