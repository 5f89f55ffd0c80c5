"""Derived files: data a process computes from a store's committed rows (span offsets, an approximate-search index,
posting lists) and keeps beside the store so the next process need not compute it again.

Rules (the store's own rules, `instar.store`, still hold for the columns and SQLite; these are for derived data):

1. Never the only copy: everything in a derived file can be rebuilt from the store's committed columns and SQLite
   tables. Losing one costs time, never data.
2. Written whole, atomically: the bytes go to a temporary file in the same directory, are fsync'ed, and the file
   is renamed over the old one (then the directory is fsync'ed). A `kill -9` at any point leaves either the old
   file or the new one, never a mix; a leftover temporary file is ignored (and removed by the next save).
3. Checked on every load: a header names the store it was derived from (`identity`: the key and commit time of
   its first row, so a store recreated at the same path is another store), what it covers (e.g. rows [0, n)),
   and a crc32 of every array. A file that is missing, truncated, damaged, from another store, or not what the
   caller expects is reported as absent (None) and the caller rebuilds it.
4. Committed rows never change, so a file covering rows [0, n) stays right for every later snapshot: the caller
   extends it with rows [n, n') (incremental) and masks tombstoned rows at query time.
5. Any process may write one (readers included): its content is a function of committed data, so two processes
   writing the same file race harmlessly. A store in a read-only directory simply keeps its derived data in memory.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DERIVED = "derived"
MAGIC = b"INSTARD1"
ALIGN = 64


def directory(store) -> Path:
    """Where a store's derived files live (created on first save)."""
    return Path(store.directory) / DERIVED


def identity(store) -> list:
    """Which store this is: the key and commit time of its first row (a recreated store is another one)."""
    row = store.db.execute("SELECT key, committed_at FROM store_rows WHERE row = 0").fetchone()
    return [] if row is None else [row[0], row[1]]


def save(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> bool:
    """Write `arrays` and `meta` (JSON-able) to `path` atomically (rule 2); False (logged) if the directory cannot
    be written, so a read-only store keeps working from memory."""
    header = {"meta": meta, "arrays": {}}
    offset = 0
    blobs = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        data = a.reshape(-1).view(np.uint8)  # the array's own bytes, not a copy (a serialised index can be GBs)
        header["arrays"][name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                                  "nbytes": int(data.nbytes), "crc32": zlib.crc32(data)}
        pad = (-int(data.nbytes)) % ALIGN
        blobs.append((data, b"\0" * pad))
        offset += int(data.nbytes) + pad
    head = json.dumps(header).encode()
    head += b" " * ((-(len(MAGIC) + 8 + len(head))) % ALIGN)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        log.warning("%s: cannot write derived data (%s); keeping it in memory", path, e)
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for data, pad in blobs:
                f.write(data)
                f.write(pad)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        log.warning("%s: cannot write derived data (%s); keeping it in memory", path, e)
        Path(tmp).unlink(missing_ok=True)
        return False
    return True


def load(path: Path, *, mmap: bool = False) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays, meta) of a derived file, every array's crc32 checked; None (logged) when it is missing or damaged.
    `mmap`: arrays are read-only memory maps of the file (after the check) instead of copies in memory."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(len(MAGIC) + 8)
            if len(start) < len(MAGIC) + 8 or start[:len(MAGIC)] != MAGIC:
                raise ValueError("not a derived file (bad magic)")
            (n,) = struct.unpack("<Q", start[len(MAGIC):])
            if n > size:
                raise ValueError("truncated header")
            header = json.loads(f.read(n))
        base = len(MAGIC) + 8 + n
        arrays = {}
        for name, spec in header["arrays"].items():
            end = base + spec["offset"] + spec["nbytes"]
            if end > size:
                raise ValueError(f"array {name!r} truncated ({size} bytes, needs {end})")
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            if spec["nbytes"] == 0:
                arrays[name] = np.zeros(shape, dtype)
                continue
            m = np.memmap(path, dtype=np.uint8, mode="r", offset=base + spec["offset"], shape=(spec["nbytes"],))
            if zlib.crc32(m) != spec["crc32"]:
                raise ValueError(f"array {name!r}: checksum mismatch")
            a = m.view(dtype).reshape(shape)
            arrays[name] = a if mmap else np.array(a)
        return arrays, header["meta"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        log.warning("%s: derived data unusable (%s); rebuilding it from the store", path, e)
        return None
