"""What an index stores per image beyond its columns' bytes: records, add reports, descriptions and their checks."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..extract.extractor import Extractor
from ..store import Column, StoreError
from ..store.columns import BOXES, GLOBAL, REGIONS


FORMAT_VERSION = 2
DATABASE, MODEL = "index.sqlite", "model.npz"


def columns_for(extractor: Extractor) -> tuple[Column, ...]:
    """The per-image data an index of this extractor stores: the global descriptor, and when the preset stores
    regions, each image's region boxes (original pixels) and, unless its coding keeps only their codes, region
    descriptors (ragged: R items per image)."""
    cols = [Column(GLOBAL, "float32", (None,))]
    if extractor.stores_regions:
        cols.append(Column(BOXES, "float32", (4,), ragged=True))
    if extractor.stores_region_descriptors:
        cols.append(Column(REGIONS, "float32", (None,), ragged=True))
    return tuple(cols + extractor.columns())

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    row INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (path TEXT PRIMARY KEY, reason TEXT NOT NULL, at REAL NOT NULL);
"""
TABLES = ("meta", "images", "failures")

# The index's errors are the store's: every message starts with the file or directory concerned.
IndexError_ = StoreError

NO_CONTENT = "no usable content: its descriptor is {what} (a blank, featureless or tiny image)"


def descriptor_problem(vec: np.ndarray) -> str | None:
    """Why a descriptor cannot be used (non-finite values, all zero, norm ~ 0), or None if it can."""
    v = np.asarray(vec, dtype=np.float64)
    if v.size == 0:
        return NO_CONTENT.format(what="empty")
    if not np.all(np.isfinite(v)):
        return NO_CONTENT.format(what="not finite (NaN or infinity)")
    if float(np.linalg.norm(v)) < 1e-6:
        return NO_CONTENT.format(what="all zero")
    return None


@dataclass
class ImageRecord:
    id: int          # = row (kept for compatibility: one id per stored version of an image)
    row: int
    path: str
    name: str
    width: int
    height: int
    sha256: str


@dataclass
class AddReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Described:
    """One described image, ready to store (`Index.describe_file` makes one; `Index.add_descriptions` stores any):
    `path` identifies it in the index (a file path; it need not exist for rows made elsewhere), `name` is what
    users see, `width` x `height` its original size, `sha256` its content hash (an unchanged file is skipped on
    the next add), `data` {column: array} for every column of `Index.columns` -- the global descriptor (D,)
    float32, and per the preset region boxes (R, 4) in original pixels, region descriptors (R, Dr), codes..."""
    path: str
    name: str
    width: int
    height: int
    sha256: str
    data: dict[str, np.ndarray]




def check_description(it: Described, columns: Sequence[Column], stored: dict[str, Column], dim: int) -> None:
    """ValueError naming the image and the column when `it` does not fit an index of these `columns` (`stored`:
    the store's declarations, whose shapes the first rows fixed) and global dimension `dim` (0: not fixed yet)."""
    who = f"{it.name or it.path}"
    if not it.path or not isinstance(it.path, str):
        raise ValueError(f"{who}: a description needs its path (a non-empty string)")
    if int(it.width) < 1 or int(it.height) < 1:
        raise ValueError(f"{who}: width and height must be at least 1 pixel, got {it.width} x {it.height}")
    expected = {c.name: c for c in columns}
    extra = sorted(set(it.data) - set(expected))
    missing = sorted(set(expected) - set(it.data))
    if extra or missing:
        raise ValueError(f"{who}: columns {sorted(it.data)} do not match this index's "
                         f"{sorted(expected)} (missing: {missing or 'none'}, unknown: {extra or 'none'})")
    lengths = {}
    for name, col in expected.items():
        a = np.asarray(it.data[name])
        if a.dtype != np.dtype(col.dtype):
            raise ValueError(f"{who}: column {name!r} must be {col.dtype}, got {a.dtype}")
        item_shape = a.shape[1:] if col.ragged else a.shape
        known_shape = stored.get(name, col).shape
        if len(item_shape) != len(known_shape) or any(k and k != n for k, n in zip(known_shape, item_shape)):
            raise ValueError(f"{who}: column {name!r} items of shape {tuple(item_shape)}, this index stores "
                             f"{tuple(k or 'any' for k in known_shape)}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"{who}: column {name!r} holds NaN or infinity")
        if col.ragged and name in (BOXES, REGIONS):
            lengths[name] = len(a)
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{who}: {lengths} -- region boxes and descriptors must come one per region")
    problem = descriptor_problem(it.data[GLOBAL])
    if problem:
        raise ValueError(f"{who}: global descriptor: {problem}")
    if dim and np.asarray(it.data[GLOBAL]).shape != (dim,):
        raise ValueError(f"{who}: global descriptor of shape {np.asarray(it.data[GLOBAL]).shape}, the index "
                         f"holds dimension {dim}")


def stored_name(path: Path | str, root: Path | str | None) -> str:
    """The name an image file is stored under: its path relative to `root` as the user gave both (absolute but
    with links not resolved, so a link's target never shows), else relative to the resolved root, else the
    absolute path."""
    given = Path(os.path.abspath(path))
    if root is None:
        return str(given)
    base = Path(os.path.abspath(root))
    if given.is_relative_to(base):
        return given.relative_to(base).as_posix()
    real, real_base = given.resolve(), base.resolve()
    return real.relative_to(real_base).as_posix() if real.is_relative_to(real_base) else str(given)


def named_files(paths, root=None) -> list:
    """(resolved path, stored name) of each distinct file, as `Index.add` names them: the file read (and its key)
    is the resolved path; the name is the path as the user sees it, relative to `root`, links not resolved."""
    items = {}
    for given in paths:
        items.setdefault(Path(given).resolve(), stored_name(given, root))
    return list(items.items())
