"""The embedded default index: a directory holding per-image data in an append-only column store
(`instar/store/`) and image metadata in SQLite.

Layout of `NAME.index/` (format 2):
- `global.float32` the store's column "global": one (D,) float32 L2-normalised descriptor per row;
- `index.sqlite`   SQLite in WAL mode: the store's tables (`store_columns`, `store_rows` with each row's key =
                   the image path, crc32 checksum and tombstone, `store_spans`), and the index's own: `meta`
                   (format version, preset TOML, what the model was trained on), `images` (row, path, name,
                   width, height, sha256, added_at: one per committed row, immutable) and `failures` (files that
                   could not be used, with the reason);
- `model.npz`      what the preset learned (codebook, whitening), written once when the index is created;
- `.lock`          the writer's flock.

Crash safety, concurrent readers, immutability of committed rows, tombstones and repair under the writer's
lock are the store's rules: read them in `instar/store/__init__.py`'s docstring; every later column (regions, binary
codes, inverted file) follows them. In short: `add` commits a batch with ONE SQLite transaction after its bytes
are fsync'ed and checked, so an interrupted add resumes where it stopped; a changed file is a new row (the old
one is tombstoned), `remove` / `prune` tombstone; readers (search) see a consistent snapshot of the committed,
live rows and never modify anything.

The columns an index holds follow from its preset (`columns_for`): `global.float32` always; with region
descriptors also `boxes.float32` (each image's region boxes, (R, 4) [x0, y0, x1, y1] in original pixels) and
`regions.float32` ((R, Dr) region descriptors), both ragged; and the columns the extraction stages contribute
(`Extractor.columns()`, e.g. a local-feature kernel's visual words and aggregated residuals), those holding pixel
coordinates scaled to the original image like the region boxes; `add` stores whatever `_describe` returns for each.

Format 1 (instar before this store: `vectors.f32` rewritten in place) is not migrated: its rows may already
have been damaged by the bug format 2 fixes and it holds no checksums to tell, so opening it says how to
rebuild it (`instar index PHOTOS --out NEW.index`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..core.progress import Progress, no_progress
from ..extract import images as imgs
from ..extract.extractor import Extractor
from ..presets import Preset, preset_from_toml
from ..store import TABLES as STORE_TABLES
from ..store import Column, Snapshot, Store, connect
from ..store.columns import GLOBAL

from .describe import describe_file, describer_for
from .records import (DATABASE, FORMAT_VERSION, MODEL, SCHEMA_SQL, TABLES, AddReport,
                      Described, ImageRecord, IndexError_, check_description, columns_for, named_files)

log = logging.getLogger(__name__)

_RECORD = "i.row, i.row, i.path, i.name, i.width, i.height, i.sha256"
_LIVE = "FROM images i JOIN store_rows s ON s.row = i.row WHERE s.removed_at IS NULL"


def _load_model(path: Path) -> dict[str, np.ndarray]:
    """The learned arrays of `model.npz`, never unpickling anything; a clear IndexError_ naming the file otherwise."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise IndexError_(f"{path}: missing; the index's learned model is needed (rebuild the index)") from None
    except EOFError:
        raise IndexError_(f"{path}: empty or truncated model file (rebuild the index)") from None
    except zipfile.BadZipFile:
        raise IndexError_(f"{path}: damaged model archive, not a readable .npz (rebuild the index)") from None
    except ValueError:
        raise IndexError_(f"{path}: not a NumPy .npz model file; instar does not load other formats "
                          "(rebuild the index)") from None
    except OSError as e:
        raise IndexError_(f"{path}: cannot read the model file ({e.strerror or e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise IndexError_(f"{path}: a single NumPy array, not the .npz archive of learned arrays (rebuild the index)")
    try:
        with data:
            return {k: data[k] for k in data.files}
    except ValueError:
        raise IndexError_(f"{path}: holds object (pickled) arrays, which instar never loads (rebuild the index)") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise IndexError_(f"{path}: damaged model archive ({type(e).__name__}) (rebuild the index)") from None


class Index:
    """An on-disk image index. Create with `Index.create`, reopen with `Index.open`, grow with `add`, drop images
    with `remove` / `prune`, check stored data with `verify`. Search through `snapshot()` (or `vectors` and
    `live_rows()`)."""

    def __init__(self, path: Path, db: sqlite3.Connection, extractor: Extractor, store: Store):
        self.path = path
        self._db = db
        self.extractor = extractor
        self.store = store

    # --- creation and opening ------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, preset: Preset, train: Sequence[Path] = (), *, trained_on: str = "",
               progress: Progress = no_progress, weights_mirror: str | None = None) -> "Index":
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
            db = connect(tmp / DATABASE, create=True)
            try:
                db.execute("PRAGMA query_only=OFF")
                db.executescript(SCHEMA_SQL)
                meta = {"format_version": str(FORMAT_VERSION), "preset": preset.to_toml(),
                        "trained_on": trained_on or (f"{len(train)} images" if preset.needs_training else "nothing to train"),
                        "created_at": str(time.time())}
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                db.execute("COMMIT")
                Store.initialise(tmp, db, columns_for(extractor))
            finally:
                db.close()
            np.savez(tmp / MODEL, **extractor.state())
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path, weights_mirror=weights_mirror)

    @classmethod
    def open(cls, path: Path | str, *, weights_mirror: str | None = None) -> "Index":
        """Open an index for reading and adding. Opening never modifies anything on disk."""
        path = Path(path)
        if not path.is_dir():
            raise IndexError_(f"{path}: not an instar index ({'not a folder' if path.exists() else 'no such folder'})")
        dbfile = path / DATABASE
        if not dbfile.is_file():
            raise IndexError_(f"{path}: not an instar index (missing {DATABASE})")
        try:
            db = connect(dbfile)
        except sqlite3.DatabaseError as e:
            raise IndexError_(f"{dbfile}: not a readable SQLite database ({e})") from None
        try:
            meta = cls._read_meta(path, db)
            try:
                preset = preset_from_toml(meta["preset"], source=f"{dbfile} (stored preset)")
            except KeyError:
                raise IndexError_(f"{dbfile}: the meta table holds no preset") from None
            state = _load_model(path / MODEL)
            try:
                extractor = Extractor(preset, weights_mirror=weights_mirror).load_state(state)
            except (KeyError, ValueError, TypeError) as e:
                raise IndexError_(f"{path / MODEL}: not the learned model of preset {preset.name!r} ({e})") from None
            if not extractor.is_fitted:
                raise IndexError_(f"{path / MODEL}: holds no learned codebook/whitening for preset {preset.name!r} "
                                  "(rebuild the index)")
            store = Store(path, db)
            store.snapshot()  # checks every column file against its committed length
            return cls(path, db, extractor, store)
        except BaseException:
            db.close()
            raise

    @staticmethod
    def _read_meta(path: Path, db: sqlite3.Connection) -> dict[str, str]:
        dbfile = path / DATABASE
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            meta = dict(db.execute("SELECT key, value FROM meta")) if "meta" in tables else None
        except sqlite3.DatabaseError as e:
            raise IndexError_(f"{dbfile}: not a readable SQLite database ({e})") from None
        if meta is None:
            raise IndexError_(f"{dbfile}: not an instar index database (missing table meta)")
        version = meta.get("format_version")
        if version == "1":
            raise IndexError_(f"{path}: index format 1, written by an older instar; this instar reads format "
                              f"{FORMAT_VERSION} (a checksummed append-only store) and does not migrate old indexes. "
                              f"Rebuild it: instar index PHOTOS --out NEW.index (the old index is left untouched)")
        if version != str(FORMAT_VERSION):
            raise IndexError_(f"{path}: index format {version!r}, this instar reads {FORMAT_VERSION}")
        missing = [t for t in (*TABLES, *STORE_TABLES) if t not in tables]
        if missing:
            raise IndexError_(f"{dbfile}: not a complete instar index database (missing table{'s' * (len(missing) > 1)} "
                              f"{', '.join(missing)}); rebuild the index")
        return meta

    def another(self) -> "Index":
        """A second handle on this index, for another thread: its own SQLite connection (a connection belongs to
        the thread that made it) and store, sharing this handle's extractor (read-only once loaded)."""
        db = connect(self.path / DATABASE)
        return Index(self.path, db, self.extractor, Store(self.path, db))

    def writing(self):
        """Hold the writer's lock across several calls (`add`, `remove`, ...; they take it again re-entrantly);
        StoreBusy if another process holds it."""
        return self.store.writer()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------------
    @property
    def preset(self) -> Preset:
        return self.extractor.preset

    @property
    def dim(self) -> int:
        """Descriptor dimension (0 until the first image is added)."""
        shape = self._db.execute("SELECT shape FROM store_columns WHERE name = ?", (GLOBAL,)).fetchone()[0]
        return json.loads(shape)[0] or 0

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def __len__(self) -> int:
        """Number of live (not removed) images."""
        return self.store.live_count()

    def snapshot(self) -> Snapshot:
        """A consistent read-only view: committed rows, which are live, memory maps of their data."""
        return self.store.snapshot()

    @property
    def vectors(self) -> np.ndarray:
        """(N, D) float32 memory-mapped descriptors of all N committed rows, row i = the image with `row` i,
        L2-normalised. Rows of removed images are still there: restrict to `snapshot().live_rows()` (search does)."""
        snap = self.snapshot()
        if snap.n_rows == 0:
            return np.zeros((0, max(self.dim, 1)), dtype=np.float32)
        return snap.column(GLOBAL)

    def records(self, rows: Iterable[int] | None = None) -> list[ImageRecord]:
        """Metadata of the images at `rows` (in that order, removed or not), or of all live images ordered by row."""
        if rows is None:
            return [ImageRecord(*r) for r in self._db.execute(f"SELECT {_RECORD} {_LIVE} ORDER BY i.row")]
        rows = [int(r) for r in rows]
        by_row = {}
        for start in range(0, len(rows), 500):
            part = rows[start:start + 500]
            by_row.update({r[1]: ImageRecord(*r) for r in self._db.execute(
                f"SELECT {_RECORD} FROM images i WHERE i.row IN ({','.join('?' * len(part))})", part)})
        return [by_row[r] for r in rows]

    def live_record(self, path: str) -> ImageRecord | None:
        """The live image stored under file path `path`, or None."""
        return self._live_record(path)

    def _live_record(self, path: str) -> ImageRecord | None:
        r = self._db.execute(f"SELECT {_RECORD} {_LIVE} AND s.key = ?", (path,)).fetchone()
        return None if r is None else ImageRecord(*r)

    def failures(self) -> list[tuple[str, str]]:
        return list(self._db.execute("SELECT path, reason FROM failures ORDER BY path"))

    def verify(self) -> list[tuple[ImageRecord, str]]:
        """Live images whose stored bytes are damaged (checksum mismatch or all zero), with the reason."""
        damage = self.store.verify()
        records = self.records([d.row for d in damage])
        return [(rec, d.reason) for rec, d in zip(records, damage)]

    # --- writing -------------------------------------------------------------------------------
    def add(self, paths: Iterable[Path | str], *, root: Path | str | None = None, batch_size: int = 16,
            progress: Progress = no_progress, on_batch: Callable[[int], None] | None = None, workers: int = 0,
            device: str = "cpu", threads: int | None = None) -> AddReport:
        """Describe and store images not yet indexed; skip unchanged ones; re-describe changed files.

        `root` makes the stored `name` relative to it: the path as given (links not resolved, so a folder of
        symbolic links stores `a/b.jpg`, never where the link points); the file read is the resolved path. A changed file gets a new row and its old row is
        tombstoned (committed rows are never rewritten). Unreadable files, and images with no usable content,
        are recorded in `failures` and skipped (a previously stored version stays). Work is committed every
        `batch_size` images, so an interrupted add loses at most one batch; `on_batch(n_live)` is called after
        each commit.

        Runtime options (never part of the preset): `workers` >= 1 describes in that many worker processes
        (decode, resize, the trunk batched over same-size images of each `batch_size` batch, `threads` torch
        threads each), the single writer storing their results in the order given; `device` (cpu, cuda, mps)
        runs the trunk there. Stored rows equal the one-process path's (bit-identical on CPU at the same torch
        threads per process: see `instar.index.describe`).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        return self._add(self.named(paths, root), batch_size=batch_size, progress=progress, on_batch=on_batch,
                         workers=workers, device=device, threads=threads)

    named = staticmethod(named_files)

    def unchanged(self, path: Path | str, sha256: str) -> bool:
        """Whether the file at `path` is stored, live, with this content hash (so `add` would skip it)."""
        known = self._live_record(str(path))
        return known is not None and known.sha256 == sha256

    def record_failures(self, failures: Sequence[tuple[str, str]]) -> None:
        """Record files that could not be used ((path, reason) each, as `add` does for its own)."""
        if failures:
            with self.store.writer() as w, w.transaction() as db:
                now = time.time()
                db.executemany("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", [(p, r, now) for p, r in failures])

    def reextract(self, records: Sequence[ImageRecord], *, batch_size: int = 16,
                  progress: Progress = no_progress) -> AddReport:
        """Describe these images again from their files and store them as new rows (e.g. the damaged rows
        `verify` found); one whose file cannot be used any more is removed and recorded as a failure."""
        items = [(Path(r.path), r.name) for r in records]
        return self._add(items, force={r.row for r in records}, batch_size=batch_size, progress=progress)

    def describe_file(self, path: Path | str, name: str | None = None) -> Described:
        """One image file described by this index's extractor, as `add` stores it; ImageLoadError (or OSError) if
        it cannot be used. Several processes or machines may describe while one writer stores."""
        path = Path(path)
        digest = imgs.content_hash(path)
        width, height, data = self._describe(path)
        return Described(str(path), str(path) if name is None else name, width, height, digest, data)

    def add_descriptions(self, items: Iterable[Described], *, batch_size: int = 256,
                         progress: Progress = no_progress) -> AddReport:
        """Store images described elsewhere (another process, a cluster, your own extractor) with the same
        checks as `add`: every column of `columns` present with its dtype and item shape, region columns of one
        length per image, a finite non-zero global descriptor of the index's dimension. A bad item raises
        ValueError naming it and the column, before anything of its batch is written. An item whose `path` is
        stored with the same `sha256` is skipped; with another hash it replaces the stored row."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        report = AddReport()
        with self.store.writer() as w:
            pending: list[Described] = []
            for it in progress(items, desc="storing"):
                self.check_description(it)
                known = self._live_record(it.path)
                if known is not None and known.sha256 == it.sha256:
                    report.unchanged += 1
                    continue
                pending.append(it)
                if len(pending) >= batch_size:
                    self._commit(w, pending, report)
                    pending = []
            if pending:
                self._commit(w, pending, report)
        return report

    @property
    def columns(self) -> tuple[Column, ...]:
        """The columns every stored image has (`columns_for` this index's extractor)."""
        return columns_for(self.extractor)

    def check_description(self, it: Described) -> None:
        """ValueError naming the image and the column when `it` does not fit this index."""
        check_description(it, self.columns, self.snapshot().columns, self.dim)

    def _describe(self, path: Path) -> tuple[int, int, dict[str, np.ndarray]]:
        """(width, height, {column: data}) of one image file; ImageLoadError if it cannot be used."""
        return describe_file(self.extractor, path)

    def _add(self, items: Sequence[tuple[Path, str]], *, force: set[int] = frozenset(), batch_size: int = 16,
             progress: Progress = no_progress, on_batch: Callable[[int], None] | None = None, workers: int = 0,
             device: str = "cpu", threads: int | None = None) -> AddReport:
        if workers < 0:
            raise ValueError(f"workers={workers}: must be 0 (this process) or more")
        report = AddReport()
        if device != "cpu" and workers == 0:
            self.extractor.to_device(device)
        with self.store.writer() as w, describer_for(self.extractor, workers=workers, batch_size=batch_size,
                                                     device=device, threads=threads) as describer:
            pending: list[Described] = []

            def todo(item: tuple[Path, str]) -> tuple:
                """(path, name, known record, content hash or None, why it needs no description or None)."""
                p, name = item
                known = self._live_record(str(p))
                try:
                    digest = imgs.content_hash(p)
                except OSError as e:
                    return p, name, known, None, f"cannot read file ({e.strerror or e})"
                if known is not None and known.sha256 == digest and known.row not in force:
                    return p, name, known, digest, "unchanged"
                return p, name, known, digest, None

            described = describer.map((todo(it) for it in items), lambda t: t[0] if t[4] is None else None)
            for (p, name, known, digest, skip), outcome in progress(described, desc="indexing", total=len(items)):
                spath = str(p)
                if skip == "unchanged":
                    report.unchanged += 1
                    continue
                reason = skip if skip is not None else (outcome if isinstance(outcome, str) else None)
                if reason is not None:
                    self._record_failure(w, spath, reason, report, known, force)
                    continue
                width, height, data = outcome
                pending.append(Described(spath, name, width, height, digest, data))
                if len(pending) >= batch_size:
                    self._commit(w, pending, report)
                    pending = []
                    if on_batch is not None:
                        on_batch(len(self))
            if pending:
                self._commit(w, pending, report)
                if on_batch is not None:
                    on_batch(len(self))
        return report

    def _record_failure(self, w, path: str, reason: str, report: AddReport, known: ImageRecord | None,
                        force: set[int]) -> None:
        log.warning("skipping %s: %s", path, reason)
        report.failed.append((path, reason))
        with w.transaction() as db:
            db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (path, reason, time.time()))
        if known is not None and known.row in force:
            w.remove([known.row])

    def _commit(self, w, pending: list[Described], report: AddReport) -> None:
        dim = self.dim
        for it in pending:
            vec = it.data[GLOBAL]
            if dim and vec.shape != (dim,):
                raise IndexError_(f"{it.path}: descriptor of shape {vec.shape}, the index holds dimension {dim}")

        def write_images(db: sqlite3.Connection, appended) -> None:
            now = time.time()
            db.executemany("INSERT INTO images (row, path, name, width, height, sha256, added_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(a.row, it.path, it.name, it.width, it.height, it.sha256, now)
                            for a, it in zip(appended, pending)])
            db.executemany("DELETE FROM failures WHERE path = ?", [(it.path,) for it in pending])

        appended = w.append([(it.path, it.data) for it in pending], on_commit=write_images)
        for a in appended:
            if a.replaced is None:
                report.added += 1
            else:
                report.updated += 1

    def remove(self, names_or_paths: Iterable[str | Path]) -> list[ImageRecord]:
        """Remove images, each given by its stored name or its file path; all must be in the index (otherwise
        nothing is removed). Their rows are tombstoned; adding the file again later appends a fresh row."""
        wanted = [str(x) for x in names_or_paths]
        with self.store.writer() as w:
            live = self.records()
            by_name = {r.name: r for r in live}
            by_path = {r.path: r for r in live}
            found: dict[int, ImageRecord] = {}
            missing = []
            for x in wanted:
                rec = by_name.get(x) or by_path.get(x) or by_path.get(os.path.abspath(x))
                if rec is None:
                    try:
                        rec = by_path.get(str(Path(x).resolve()))
                    except (OSError, RuntimeError):
                        rec = None
                if rec is None:
                    missing.append(x)
                else:
                    found[rec.row] = rec
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise IndexError_(f"{missing[0]}: not in the index {self.path}{more}; nothing was removed")
            w.remove(list(found))
        return list(found.values())

    def prune(self) -> list[ImageRecord]:
        """Remove the images whose files are gone (and forget failures of files that are gone)."""
        with self.store.writer() as w:
            gone = [r for r in self.records() if not os.path.lexists(r.path)]
            gone_failures = [(p,) for p, _ in self.failures() if not os.path.lexists(p)]

            def forget(db: sqlite3.Connection, rows) -> None:
                db.executemany("DELETE FROM failures WHERE path = ?", gone_failures)

            if gone:
                w.remove([r.row for r in gone], on_commit=forget)
            elif gone_failures:
                with w.transaction() as db:
                    forget(db, [])
        return gone

    def summary(self) -> dict:
        snap = self.snapshot()
        return {"path": str(self.path), "images": snap.n_live, "removed": len(snap.removed), "dim": self.dim,
                "preset": self.preset.name, "trained_on": self.meta("trained_on"), "failures": len(self.failures())}

    def __repr__(self) -> str:
        return f"Index({json.dumps(self.summary())})"
