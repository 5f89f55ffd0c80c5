"""The service behind the routes: one open index, searches in a thread pool, writes in one writer thread."""
from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import math
import mimetypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from fastapi import Request, UploadFile

from ..core.registry import SEARCH_SECTIONS
from ..extract import images as imgs
from ..index import DATABASE, MODEL, Index, IndexError_
from ..presets import PresetError, parse_settings
from ..presets.rules import fitting_entries
from ..search import search
from ..store import Store, connect


from .files import (FORMAT_EXTENSIONS, MAX_THUMBNAIL_SIZE, THUMBNAIL_SIZE, UPLOADS, T, ThumbnailCache, bytes_of, cpu_count,
                    inspect_image, make_thumbnail, parse_box, save_upload)
from .middleware import ApiError
from .models import (AddedFile, AddResponse, ColumnBytes, DeleteResponse, DiskUsage, Limits, PresetInfo, Provenance,
                     QueryInfo, SearchHit, SearchResponse, StatsResponse)

log = logging.getLogger(__name__)


class Service:
    """The open index and what the routes share: per-thread index handles over one extractor, the search and
    writer pools, the thumbnail cache and the limits."""

    def __init__(self, index_path: Path | str, *, token: str | None, max_upload_bytes: int, max_pixels: int,
                 max_k: int, max_files: int, allow_folders: Sequence[Path | str], workers: int,
                 torch_threads: int | None):
        self.path = Path(index_path).resolve()
        with Index.open(self.path) as primary:   # validates the index; builds and loads the extractor once
            self.extractor = primary.extractor
        self._load_lazy_stages()
        self.token = token or None
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.max_k, self.max_files = int(max_k), int(max_files)
        self.allow_folders = [Path(os.path.realpath(p)) for p in allow_folders]
        for root in self.allow_folders:
            if not root.is_dir():
                raise IndexError_(f"{root}: --allow-folder must name an existing folder")
        self.uploads = self.path / UPLOADS
        self.workers = int(workers)
        self.torch_threads = int(torch_threads) if torch_threads else max(1, cpu_count() // self.workers)
        self.search_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="instar-search")
        self.writer_pool = ThreadPoolExecutor(1, thread_name_prefix="instar-writer")
        self.thumbnails = ThumbnailCache()
        self._local = threading.local()

    def _load_lazy_stages(self) -> None:
        """Load what a preset loads on first use (a CNN trunk's weights) now, once, in this thread: requests
        then never pay for it and worker threads never race to load it. A failure (weights that cannot be
        found) stops the start-up with the extractor's own message."""
        features = self.extractor.features
        if getattr(features, "kind", None) == "maps":
            _ = features.model

    def apply_torch_threads(self) -> None:
        import torch
        torch.set_num_threads(self.torch_threads)

    def index(self) -> Index:
        """This thread's handle on the index: its own read-only SQLite connection (a connection belongs to the
        thread that made it) and store, sharing the service's extractor."""
        idx = getattr(self._local, "index", None)
        if idx is None:
            db = connect(self.path / DATABASE)
            idx = Index(self.path, db, self.extractor, Store(self.path, db))
            self._local.index = idx
        return idx

    def close(self) -> None:
        self.search_pool.shutdown(wait=True, cancel_futures=True)
        self.writer_pool.shutdown(wait=True, cancel_futures=True)

    async def run_search(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.search_pool, fn, *args)

    async def run_write(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer_pool, fn, *args)

    # --- auth ---------------------------------------------------------------------------------------
    def token_problem(self, authorization: str | None) -> str | None:
        """Why a request may not change the index (None: it may)."""
        if self.token is None:
            return None
        if not authorization:
            return "this route changes the index: send 'Authorization: Bearer <token>'"
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return "wrong bearer token"
        return None

    # --- records ------------------------------------------------------------------------------------
    def live_record(self, idx: Index, image_id: int):
        """The record of a live image, or a 404 ApiError."""
        if not 0 <= image_id < 2 ** 62:
            raise ApiError(404, "unknown id", f"no image with id {image_id}")
        try:
            (rec,) = idx.records([image_id])
        except KeyError:
            raise ApiError(404, "unknown id", f"no image with id {image_id}") from None
        if idx.store.live_row(rec.path) != rec.row:
            raise ApiError(404, "unknown id", f"image {image_id} ({rec.name}) was removed from the index")
        return rec

    # --- search -------------------------------------------------------------------------------------
    def search(self, upload: UploadFile, box: str | None, k: int | None, overrides: dict[str, str]) -> SearchResponse:
        started = time.perf_counter()
        label = upload.filename or "image"
        query_box = parse_box(box) if box is not None and box.strip() else None
        idx = self.index()
        try:
            preset = idx.preset.with_overrides(overrides)
        except PresetError as e:
            raise ApiError(422, "bad search setting", str(e).replace(f"{idx.preset.source} with overrides: ", "")) from None
        if k is None:
            k = min(int(preset["search"]["k"]), self.max_k)
        tmp = save_upload(upload)
        try:
            width, height, _ = inspect_image(tmp, label, self.max_pixels)
            if query_box is not None:
                try:
                    query_box = imgs.check_box(query_box, width, height, source=label)
                except ValueError as e:
                    raise ApiError(422, "bad box", str(e)) from None
            try:
                hits = search(idx, tmp, box=query_box, k=k, overrides=overrides)
            except imgs.ImageLoadError as e:
                raise ApiError(422, "unusable image", f"{label}: {e.reason}".replace(str(tmp), label)) from None
            except ValueError as e:
                raise ApiError(422, "bad search", str(e).replace(str(tmp), label)) from None
        finally:
            tmp.unlink(missing_ok=True)
        records = {r.row: r for r in idx.records([h.row for h in hits])}
        out = []
        for h in hits:
            r = records[h.row]
            out.append(SearchHit(rank=h.rank, score=h.score, id=h.id, name=h.name, width=r.width, height=r.height,
                                 box=h.box, image_url=f"/images/{h.id}", thumbnail_url=f"/images/{h.id}/thumbnail"))
        return SearchResponse(query=QueryInfo(filename=upload.filename, width=width, height=height, box=query_box),
                              k=k, settings={s: preset[s] for s in ("filter", "rerank", "expansion")},
                              took_ms=(time.perf_counter() - started) * 1000, hits=out)

    # --- images -------------------------------------------------------------------------------------
    def image_file(self, image_id: int) -> tuple[str, str]:
        rec = self.live_record(self.index(), image_id)
        if not os.path.isfile(rec.path):
            raise ApiError(404, "image file is gone", f"image {image_id} ({rec.name}): its file is no longer on "
                                                      "the server")
        media = mimetypes.guess_type(rec.path)[0] or "application/octet-stream"
        return rec.path, media

    def thumbnail(self, image_id: int, size: int) -> bytes:
        rec = self.live_record(self.index(), image_id)
        cached = self.thumbnails.get((rec.row, size))
        if cached is not None:
            return cached
        try:
            data = make_thumbnail(rec.path, size, self.max_pixels)
        except imgs.ImageLoadError as e:
            raise ApiError(404, "image file is unavailable", f"image {image_id} ({rec.name}): {e.reason}") from None
        self.thumbnails.put((rec.row, size), data)
        return data

    # --- writing ------------------------------------------------------------------------------------
    def _stored_upload(self, tmp: Path, label: str) -> tuple[Path, bool] | str:
        """Move a validated temporary upload to INDEX/uploads/<sha256><ext>; (path, created) or the reason it
        was refused. Identical bytes map to the same file, so uploading a photo twice does not index it twice."""
        try:
            _, _, fmt = inspect_image(tmp, label, self.max_pixels)
        except ApiError as e:
            tmp.unlink(missing_ok=True)
            return str(e.detail)
        ext = FORMAT_EXTENSIONS.get(fmt)
        if ext is None:
            tmp.unlink(missing_ok=True)
            return f"{label}: {fmt or 'this'} images are not indexed (use {', '.join(sorted(FORMAT_EXTENSIONS))})"
        target = self.uploads / (imgs.content_hash(tmp) + ext)
        if target.exists():
            tmp.unlink()
            return target, False
        os.replace(tmp, target)
        return target, True

    def add_uploads(self, uploads: list[UploadFile]) -> AddResponse:
        started = time.perf_counter()
        idx = self.index()
        self.uploads.mkdir(exist_ok=True)
        files: list[AddedFile] = []
        stored: list[tuple[int, Path, bool]] = []   # (position in files, path, created by this request)
        for up in uploads:
            label = up.filename or "file"
            tmp = save_upload(up, self.uploads, ".part")
            result = self._stored_upload(tmp, label)
            files.append(AddedFile(filename=up.filename, status="failed"))
            if isinstance(result, str):
                files[-1].error = result
            else:
                stored.append((len(files) - 1, *result))
        try:
            before = {str(p): idx.store.live_row(str(p)) for _, p, _ in stored}
            report = idx.add([p for _, p, _ in stored], root=self.uploads) if stored else None
        except BaseException:
            for _, p, created in stored:
                if created and idx.store.live_row(str(p)) is None:
                    p.unlink(missing_ok=True)
            raise
        failed = dict(report.failed) if report else {}
        seen: set[str] = set()
        for pos, p, created in stored:
            key, entry = str(p), files[pos]
            row = idx.store.live_row(key)
            if key in failed or row is None:
                entry.error = f"{entry.filename or 'file'}: {failed.get(key, 'not indexed')}"
                if created and row is None:
                    p.unlink(missing_ok=True)
                continue
            (rec,) = idx.records([row])
            entry.id, entry.name = rec.row, rec.name
            if key in seen or before[key] == row:
                entry.status = "unchanged"
            else:
                entry.status = "added" if before[key] is None else "updated"
            seen.add(key)
        count = collections.Counter(f.status for f in files)
        return AddResponse(added=count["added"], updated=count["updated"], unchanged=count["unchanged"],
                           failed=count["failed"], images=len(idx), took_ms=(time.perf_counter() - started) * 1000,
                           files=files)

    def folder_root(self, folder: str) -> tuple[Path, Path]:
        """(the folder's real path, the allowed root holding it), or a 403/404 ApiError."""
        if not self.allow_folders:
            raise ApiError(403, "folders not allowed", "adding a server-side folder is off; start the server with "
                                                       "--allow-folder DIR to allow folders inside DIR")
        if "\0" in folder:
            raise ApiError(422, "bad folder", "folder: a path cannot contain a NUL character")
        real = Path(os.path.realpath(folder))
        root = next((r for r in self.allow_folders if real.is_relative_to(r)), None)
        if root is None:
            raise ApiError(403, "folder not allowed", f"{folder}: outside the folders this server may read "
                                                      f"({', '.join(map(str, self.allow_folders))})")
        if not real.is_dir():
            raise ApiError(404, "no such folder", f"{folder}: not a folder on the server")
        return real, root

    def add_folder(self, folder: str) -> AddResponse:
        started = time.perf_counter()
        real, _ = self.folder_root(folder)
        problems: list[tuple[Path, str]] = []
        paths = []
        for p in imgs.list_images(real, problems=problems):
            target = Path(os.path.realpath(p))
            if any(target.is_relative_to(r) for r in self.allow_folders):
                paths.append(p)
            else:
                problems.append((p, "a symbolic link to a file outside the allowed folders; not read"))
        idx = self.index()
        report = idx.add(paths, root=real)
        files = [AddedFile(filename=str(p), status="failed", error=reason) for p, reason in [*problems, *report.failed]]
        return AddResponse(added=report.added, updated=report.updated, unchanged=report.unchanged, failed=len(files),
                           images=len(idx), took_ms=(time.perf_counter() - started) * 1000, files=files)

    def delete(self, image_id: int) -> DeleteResponse:
        idx = self.index()
        rec = self.live_record(idx, image_id)
        with idx.store.writer() as w:
            if idx.store.live_row(rec.path) != rec.row:   # removed by another process meanwhile
                raise ApiError(404, "unknown id", f"image {image_id} ({rec.name}) was removed from the index")
            w.remove([rec.row])
            path = Path(rec.path)
            if path.parent == self.uploads and idx.store.live_row(rec.path) is None:
                path.unlink(missing_ok=True)   # an upload's file belongs to the index: it goes with its row
        return DeleteResponse(id=rec.row, name=rec.name, images=len(idx))

    # --- stats --------------------------------------------------------------------------------------
    def stats(self) -> StatsResponse:
        idx = self.index()
        snap = idx.snapshot()
        columns = []
        for col in snap.columns.values():
            items = snap.items[col.name]
            columns.append(ColumnBytes(name=col.name, file=col.file, dtype=col.dtype, shape=list(col.shape),
                                       ragged=col.ragged, items=items, committed_bytes=items * col.item_bytes,
                                       bytes_on_disk=bytes_of(self.path / col.file)))
        database = sum(bytes_of(self.path / (DATABASE + s)) for s in ("", "-wal", "-shm"))
        model = bytes_of(self.path / MODEL)
        uploads = 0
        if self.uploads.is_dir():
            with os.scandir(self.uploads) as entries:
                uploads = sum(e.stat(follow_symlinks=False).st_size for e in entries if e.is_file(follow_symlinks=False))
        preset = idx.preset
        f = preset["features"]
        if f["type"] == "cnn":
            features = f"{f['arch']}" + (f" at {f['layer']}" if f.get("layer") else "") + f", scales {f['scales']}"
        else:
            features = f["type"] + "".join(f", {k} {v}" for k, v in f.items() if k != "type")
        try:
            created = float(idx.meta("created_at") or "")
        except ValueError:
            created = None
        provenance = Provenance(features=features, weights=f.get("weights"),
                                weights_source=self.extractor.extras.get("source") if f.get("weights") else None,
                                learned=list(self.extractor.learned), trained_on=idx.meta("trained_on"),
                                created_at=created if created is not None and math.isfinite(created) else None)
        stores = self.extractor.stores_regions
        # the entries the index's stored data allow (e.g. no ca-sr without regions, no sp without local positions)
        choices = {section: fitting_entries(preset.sections, section) for section in ("filter", "rerank", "expansion")}
        return StatsResponse(
            images=snap.n_live, removed=len(snap.removed), rows=snap.n_rows, dim=idx.dim, failures=len(idx.failures()),
            stores_regions=stores,
            preset=PresetInfo(name=preset.name, description=preset.description, reference=preset.reference,
                              sections=preset.sections),
            search_choices=choices,
            bytes=DiskUsage(columns=columns, database=database, model=model, uploads=uploads,
                            total=sum(c.bytes_on_disk for c in columns) + database + model + uploads),
            model=provenance, limits=self.limits(), token_required=self.token is not None,
            folders_allowed=bool(self.allow_folders), workers=self.workers, torch_threads=self.torch_threads)

    def limits(self) -> Limits:
        return Limits(max_upload_bytes=self.max_upload_bytes, max_pixels=self.max_pixels, min_side=imgs.MIN_SIDE,
                      max_k=self.max_k, max_files=self.max_files, thumbnail_size=THUMBNAIL_SIZE,
                      max_thumbnail_size=MAX_THUMBNAIL_SIZE)


def web_dir() -> Path:
    return Path(str(resources.files("instar") / "web"))


def search_overrides(filter_: str | None, rerank: str | None, expansion: str | None, sets: list[str] | None) -> dict[str, str]:
    out = {}
    for section, value in (("filter", filter_), ("rerank", rerank), ("expansion", expansion)):
        if value is not None and value.strip():
            out[f"{section}.method"] = value.strip()
    try:
        out.update(parse_settings(sets, field="set", example="rerank.top=50", only=SEARCH_SECTIONS))
    except ValueError as e:
        raise ApiError(422, "bad search setting", str(e)) from None
    return out


async def refuse_unknown_fields(request: Request, known: Sequence[str]) -> None:
    form = await request.form()   # parsed once; the framework has already read it
    unknown = sorted(set(form.keys()) - set(known))
    if unknown:
        raise ApiError(422, "unknown field", f"{', '.join(unknown)}: not a field of {request.url.path} "
                                             f"(fields: {', '.join(known)})")


