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

Derived data (what is computed from committed rows and kept to save the next process the work: the ragged
columns' span offsets, `offsets.py`; approximate-search indexes) lives in `derived/` under the rules of
`derived.py`: never the only copy, written whole (temp + fsync + rename), checksummed and tied to the store's
identity, rebuilt from the columns when missing, damaged or foreign, extended when stale.
"""
from .schema import (LOCK, TABLES, Appended, Column, Damage, Staged, StoreBusy, StoreError, StoreIntegrityError,
                     connect, read_transaction)
from .store import Snapshot, Store
from .writer import Writer

__all__ = ["LOCK", "TABLES", "Appended", "Column", "Damage", "Snapshot", "Staged", "Store", "StoreBusy", "StoreError",
           "StoreIntegrityError", "Writer", "connect", "read_transaction"]
