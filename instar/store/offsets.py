"""Where each row's items lie in a ragged column, without one SQLite read per row per request.

The commit log keeps (row, column, start, count) in `store_spans`; reading those for every row of a 10^5-row index
costs ~0.3 s (a DRH search read them on every query). Committed spans never change (rule 2), so they are derived
data (`instar.store.derived`): per column two int64 arrays, `starts` and `counts`, indexed by row, kept

- in memory per `Store` object, extended with the rows committed since (one indexed range read of `store_spans`);
- on disk as `derived/offsets.COLUMN.bin` (atomic, checksummed, tied to the store's identity), written when first
  made and rewritten when the rows it lacks grow past a twentieth of it (at least 1,024), so a fresh process reads one file and only the newest spans.

A loaded file is also checked against the commit log: its last stored span must be the one SQLite holds.
"""
from __future__ import annotations

import threading

import numpy as np

from . import derived

_LOCK = threading.Lock()


def _path(store, name: str):
    return derived.directory(store) / f"offsets.{name}.bin"


def _load(store, name: str, ident: list) -> tuple[np.ndarray, np.ndarray] | None:
    got = derived.load(_path(store, name))
    if got is None:
        return None
    arrays, meta = got
    starts, counts = arrays.get("starts"), arrays.get("counts")
    if (meta.get("identity") != ident or meta.get("column") != name or starts is None or counts is None
            or starts.shape != counts.shape or starts.ndim != 1):
        return None
    m = len(counts)
    last = store.db.execute("SELECT row, start, count FROM store_spans WHERE col = ? AND row < ? ORDER BY row DESC "
                            "LIMIT 1", (name, m)).fetchone()
    if last is None:
        ok = not counts.any()
    else:
        r, s, c = last
        ok = int(starts[r]) == s and int(counts[r]) == c and not counts[r + 1:].any()
    return (starts.astype(np.int64), counts.astype(np.int64)) if ok else None


def _extend(store, name: str, have: tuple[np.ndarray, np.ndarray] | None, n_rows: int):
    ident = derived.identity(store)
    if have is None and ident:
        have = _load(store, name, ident)
    m = 0 if have is None else len(have[1])
    if m >= n_rows:
        return have
    starts = np.zeros(n_rows, np.int64)
    counts = np.zeros(n_rows, np.int64)
    if have is not None:
        starts[:m], counts[:m] = have
    found = store.db.execute("SELECT row, start, count FROM store_spans WHERE row >= ? AND row < ? AND col = ?",
                             (m, n_rows, name)).fetchall()
    if found:
        table = np.array(found, dtype=np.int64)
        starts[table[:, 0]], counts[table[:, 0]] = table[:, 1], table[:, 2]
    if ident and (m == 0 or n_rows - m >= max(1024, m // 20)):
        derived.save(_path(store, name), {"starts": starts, "counts": counts},
                     {"identity": ident, "column": name, "rows": n_rows})
    return starts, counts


def spans(store, name: str, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, counts) (n_rows,) int64 of every committed row [0, n_rows) in ragged column `name` (read-only)."""
    cache = store.offsets_cache
    with _LOCK:
        have = cache.get(name)
    if have is None or len(have[1]) < n_rows:
        have = _extend(store, name, have, n_rows)
        if have is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        with _LOCK:
            current = cache.get(name)
            if current is None or len(current[1]) < len(have[1]):
                cache[name] = have
    starts, counts = have[0][:n_rows], have[1][:n_rows]
    starts.flags.writeable = False
    counts.flags.writeable = False
    return starts, counts
