"""The embedded default store: a directory holding descriptors as a memory-mapped float32 array and image
metadata in SQLite.

Layout of `NAME.index/`:
- `vectors.f32`   rows of D float32, row i is the descriptor of the image whose `row` is i (append-only,
                  rewritten in place only when a file's content changes);
- `index.sqlite`  tables `meta` (preset TOML, dimension, what the model was trained on), `images`
                  (id, row, path, name, width, height, sha256) and `failures` (files that could not be read);
- `model.npz`     what the preset learned (codebook, whitening), written once when the index is created.

Crash safety: vectors are written and fsync'ed before the SQLite transaction that makes them visible, so
an interrupted `add` leaves at most some trailing bytes that `open` cuts off; re-running `add` resumes.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import images as imgs
from .extractor import Extractor, Progress, _no_progress
from .presets import Preset, preset_from_toml

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VECTORS, DATABASE, MODEL, LOCK = "vectors.f32", "index.sqlite", "model.npz", ".lock"

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    row INTEGER UNIQUE NOT NULL,
    path TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (path TEXT PRIMARY KEY, reason TEXT NOT NULL, at REAL NOT NULL);
"""


class IndexError_(RuntimeError):
    """An index directory that cannot be used; the message names the directory and what is wrong."""


@dataclass
class ImageRecord:
    id: int
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


class Index:
    """An on-disk image index. Create with `Index.create`, reopen with `Index.open`, grow with `add`."""

    def __init__(self, path: Path, db: sqlite3.Connection, extractor: Extractor, dim: int):
        self.path = path
        self._db = db
        self.extractor = extractor
        self.dim = dim
        self._vectors: np.ndarray | None = None

    # --- creation and opening ------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, preset: Preset, train: Sequence[Path] = (), *, trained_on: str = "",
               progress: Progress = _no_progress, weights_mirror: str | None = None) -> "Index":
        """Create a new index at `path`, fitting the preset's learned stages on the `train` image files.

        The directory appears only once fitting has finished (built aside, then renamed), so an interrupted
        create leaves nothing half-made behind.
        """
        path = Path(path)
        if path.exists():
            raise IndexError_(f"{path}: already exists; open it to add images, or choose another --out")
        extractor = Extractor(preset, weights_mirror=weights_mirror)
        if preset.needs_training:
            extractor.fit(list(train), progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            db = sqlite3.connect(tmp / DATABASE)
            db.executescript(SCHEMA_SQL)
            meta = {"format_version": str(FORMAT_VERSION), "preset": preset.to_toml(), "dim": "0",
                    "trained_on": trained_on or (f"{len(train)} images" if preset.needs_training else "nothing to train"),
                    "created_at": str(time.time())}
            with db:
                db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            db.close()
            np.savez(tmp / MODEL, **extractor.state())
            (tmp / VECTORS).touch()
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path, weights_mirror=weights_mirror)

    @classmethod
    def open(cls, path: Path | str, *, weights_mirror: str | None = None) -> "Index":
        path = Path(path)
        for name in (DATABASE, VECTORS, MODEL):
            if not (path / name).is_file():
                raise IndexError_(f"{path}: not an instar index (missing {name})")
        db = sqlite3.connect(path / DATABASE)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as e:
            db.close()
            raise IndexError_(f"{path / DATABASE}: unreadable metadata ({e})") from None
        if meta.get("format_version") != str(FORMAT_VERSION):
            db.close()
            raise IndexError_(f"{path}: index format {meta.get('format_version')!r}, this instar reads {FORMAT_VERSION}")
        preset = preset_from_toml(meta["preset"], source=f"{path / DATABASE} (stored preset)")
        with np.load(path / MODEL) as z:
            state = {k: z[k] for k in z.files}
        extractor = Extractor(preset, weights_mirror=weights_mirror).load_state(state)
        index = cls(path, db, extractor, int(meta["dim"]))
        index._repair()
        return index

    def _repair(self) -> None:
        """Cut vector bytes that no committed metadata row refers to (left by an interrupted add)."""
        n = len(self)
        expected = n * self.dim * 4
        size = (self.path / VECTORS).stat().st_size
        if size < expected:
            raise IndexError_(f"{self.path / VECTORS}: holds {size} bytes but {n} images of dimension {self.dim} "
                              f"need {expected}; the file was truncated or replaced")
        if size > expected:
            log.info("%s: dropping %d bytes of an interrupted add", self.path / VECTORS, size - expected)
            with open(self.path / VECTORS, "r+b") as f:
                f.truncate(expected)
                os.fsync(f.fileno())

    def close(self) -> None:
        self._vectors = None
        self._db.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------------
    @property
    def preset(self) -> Preset:
        return self.extractor.preset

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) float32 memory-mapped descriptors, row i = the image with `row` i; L2-normalised."""
        if self._vectors is None or self._vectors.shape[0] != len(self):
            n = len(self)
            if n == 0:
                self._vectors = np.zeros((0, max(self.dim, 1)), dtype=np.float32)
            else:
                self._vectors = np.memmap(self.path / VECTORS, dtype=np.float32, mode="r", shape=(n, self.dim))
        return self._vectors

    def records(self, rows: Iterable[int] | None = None) -> list[ImageRecord]:
        """Metadata of the images at `rows` (in that order), or of all images ordered by row."""
        cols = "id, row, path, name, width, height, sha256"
        if rows is None:
            return [ImageRecord(*r) for r in self._db.execute(f"SELECT {cols} FROM images ORDER BY row")]
        rows = [int(r) for r in rows]
        by_row = {r[1]: ImageRecord(*r) for r in self._db.execute(
            f"SELECT {cols} FROM images WHERE row IN ({','.join('?' * len(rows))})", rows)} if rows else {}
        return [by_row[r] for r in rows]

    def failures(self) -> list[tuple[str, str]]:
        return list(self._db.execute("SELECT path, reason FROM failures ORDER BY path"))

    # --- writing -------------------------------------------------------------------------------
    def add(self, paths: Iterable[Path | str], *, root: Path | str | None = None, batch_size: int = 16,
            progress: Progress = _no_progress, on_batch: Callable[[int], None] | None = None) -> AddReport:
        """Describe and store images not yet indexed; skip unchanged ones; re-describe changed files.

        `root` makes the stored `name` relative to it. Unreadable files are recorded in `failures` and
        skipped. Work is committed every `batch_size` images, so an interrupted add loses at most one batch;
        `on_batch(n_committed)` is called after each commit.
        """
        root = Path(root).resolve() if root is not None else None
        report = AddReport()
        with open(self.path / LOCK, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexError_(f"{self.path}: another process is adding to this index") from None
            pending: list[tuple[str, str, int, int, str, np.ndarray, int | None]] = []
            unique = list(dict.fromkeys(Path(p).resolve() for p in paths))
            for p in progress(unique, desc="indexing"):
                spath = str(p)
                name = p.relative_to(root).as_posix() if root is not None and p.is_relative_to(root) else spath
                try:
                    digest = imgs.content_hash(p)
                except OSError as e:
                    self._record_failure(spath, f"cannot read file ({e.strerror or e})", report)
                    continue
                known = self._db.execute("SELECT row, sha256 FROM images WHERE path = ?", (spath,)).fetchone()
                if known is not None and known[1] == digest:
                    report.unchanged += 1
                    continue
                try:
                    image = imgs.load_image(p)
                    vec = self.extractor.describe_image(imgs.resize_longest(image, self.preset["image"]["max_size"]))
                except imgs.ImageLoadError as e:
                    self._record_failure(spath, e.reason, report)
                    continue
                pending.append((spath, name, image.width, image.height, digest, vec, known[0] if known else None))
                if len(pending) >= batch_size:
                    self._commit(pending, report)
                    pending = []
                    if on_batch is not None:
                        on_batch(len(self))
            if pending:
                self._commit(pending, report)
                if on_batch is not None:
                    on_batch(len(self))
        return report

    def _record_failure(self, path: str, reason: str, report: AddReport) -> None:
        log.warning("skipping %s: %s", path, reason)
        report.failed.append((path, reason))
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (path, reason, time.time()))

    def _commit(self, pending, report: AddReport) -> None:
        dim = pending[0][5].shape[0]
        if self.dim == 0:
            self.dim = dim
        for item in pending:
            if item[5].shape != (self.dim,):
                raise IndexError_(f"{item[0]}: descriptor of shape {item[5].shape}, the index holds dimension {self.dim}")
        n = len(self)
        new = [it for it in pending if it[6] is None]
        changed = [it for it in pending if it[6] is not None]
        with open(self.path / VECTORS, "r+b") as f:
            f.seek(n * self.dim * 4)
            f.write(np.stack([it[5] for it in new]).astype(np.float32).tobytes() if new else b"")
            for it in changed:
                f.seek(it[6] * self.dim * 4)
                f.write(it[5].astype(np.float32).tobytes())
            f.flush()
            os.fsync(f.fileno())
        now = time.time()
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(self.dim),))
            self._db.executemany(
                "INSERT INTO images (row, path, name, width, height, sha256, added_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(n + i, it[0], it[1], it[2], it[3], it[4], now) for i, it in enumerate(new)])
            self._db.executemany("UPDATE images SET width = ?, height = ?, sha256 = ?, added_at = ? WHERE row = ?",
                                 [(it[2], it[3], it[4], now, it[6]) for it in changed])
            self._db.executemany("DELETE FROM failures WHERE path = ?", [(it[0],) for it in pending])
        report.added += len(new)
        report.updated += len(changed)
        self._vectors = None

    def summary(self) -> dict:
        return {"path": str(self.path), "images": len(self), "dim": self.dim, "preset": self.preset.name,
                "trained_on": self.meta("trained_on"), "failures": len(self.failures())}

    def __repr__(self) -> str:
        return f"Index({json.dumps(self.summary())})"
