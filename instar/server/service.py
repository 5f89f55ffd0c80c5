"""The service behind the routes: one open index, searches in a thread pool, writes in one writer thread."""
from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import math
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
from ..extract.image_files import FORMAT_EXTENSIONS, inspect_image, make_thumbnail, read_image_file
from ..index import DATABASE, MODEL, Index, IndexError_, remove_owned, remove_unowned
from ..presets import PresetError, parse_settings
from ..presets.rules import fitting_entries
from ..search import ShardedIndex, open_index, search
from ..store import StoreBusy

from .files import (MAX_THUMBNAIL_SIZE, THUMBNAIL_SIZE, UPLOADS, T, ThumbnailCache, bytes_of, cpu_count, parse_box,
                    save_upload)
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
        self.primary = open_index(self.path)   # validates the index (or manifest); builds the extractor once
        sharded = isinstance(self.primary, ShardedIndex)
        self.folders = [s.path for s in self.primary.shards] if sharded else [self.path]
        self.extractor = self.primary.extractor
        self._load_lazy_stages()
        self.token = token or None
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.max_k, self.max_files = int(max_k), int(max_files)
        self.allow_folders = [Path(os.path.realpath(p)) for p in allow_folders]
        for root in self.allow_folders:
            if not root.is_dir():
                raise IndexError_(f"{root}: --allow-folder must name an existing folder")
        # a sharded index's uploads lie beside its shards (NAME.shards/uploads for NAME.shards.json)
        self.uploads = (self.path.with_name(self.path.name.removesuffix(".json")) if sharded else self.path) / UPLOADS
        self._remove_orphan_uploads(self.primary)
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

    def _remove_orphan_uploads(self, idx: Index) -> None:
        """Uploads an add killed before its commit left behind (no committed row owns them) are deleted, under
        the writer's lock; when another process writes to the index now, the next upload does it."""
        try:
            remove_unowned(idx, self.uploads)
        except StoreBusy:
            log.warning("%s: another process is writing; orphan uploads are removed at the next upload", self.path)

    def apply_torch_threads(self) -> None:
        import torch
        torch.set_num_threads(self.torch_threads)

    def index(self) -> Index:
        """This thread's handle on the index: its own read-only SQLite connection (a connection belongs to the
        thread that made it) and store, sharing the service's extractor."""
        idx = getattr(self._local, "index", None)
        if idx is None:
            idx = self._local.index = self.primary.another()
        return idx

    def close(self) -> None:
        self.search_pool.shutdown(wait=True, cancel_futures=True)
        self.writer_pool.shutdown(wait=True, cancel_futures=True)
        self.primary.close()

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
        """The record of a live image, or a 404 ApiError. Ids are an index's rows; a sharded index's are stable
        across adds (`ShardedIndex.records_by_id`), not its merged row numbers, which shift as a shard grows."""
        if not 0 <= image_id < 2 ** 62:
            raise ApiError(404, "unknown id", f"no image with id {image_id}")
        try:
            (rec,) = idx.records_by_id([image_id]) if isinstance(idx, ShardedIndex) else idx.records([image_id])
        except KeyError:
            raise ApiError(404, "unknown id", f"no image with id {image_id}") from None
        live = idx.live_record(rec.path)
        if live is None or live.id != rec.id:
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
            info = self.inspect(tmp, label)
            width, height = info.width, info.height
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

    def inspect(self, path: Path, label: str):
        """What an uploaded file's header says; 413 above the pixel limit, 422 for what is not an image."""
        try:
            return inspect_image(path, label, self.max_pixels)
        except imgs.ImageTooLarge as e:
            raise ApiError(413, "image too large", f"{label}: {e.reason}") from None
        except imgs.ImageLoadError as e:
            raise ApiError(422, "bad image", f"{label}: {e.reason}") from None

    # --- images -------------------------------------------------------------------------------------
    def image_file(self, image_id: int) -> tuple[bytes, str]:
        """The bytes and media type of a live image's file, with the add's rules re-applied as it is opened
        (its real path unchanged, no link, a regular file, an image by its content); 404 otherwise."""
        rec = self.live_record(self.index(), image_id)
        try:
            data, info = read_image_file(rec.path, f"image {image_id} ({rec.name})", self.max_pixels)
        except imgs.ImageLoadError as e:
            raise ApiError(404, "image file is unavailable", str(e)) from None
        return data, info.media_type

    def thumbnail(self, image_id: int, size: int) -> bytes:
        rec = self.live_record(self.index(), image_id)
        label = f"image {image_id} ({rec.name})"
        try:
            data, _ = read_image_file(rec.path, label, self.max_pixels)   # checked every time, cached or not
            cached = self.thumbnails.get((rec.id, size))
            if cached is not None:
                return cached
            thumb = make_thumbnail(data, label, size, self.max_pixels)
        except imgs.ImageLoadError as e:
            raise ApiError(404, "image file is unavailable", str(e)) from None
        self.thumbnails.put((rec.id, size), thumb)
        return thumb

    # --- writing ------------------------------------------------------------------------------------
    def _stored_upload(self, tmp: Path, label: str) -> tuple[Path, bool] | str:
        """Move a validated temporary upload to INDEX/uploads/<sha256><ext>; (path, created) or the reason it
        was refused. Identical bytes map to the same file, so uploading a photo twice does not index it twice."""
        try:
            fmt = self.inspect(tmp, label).format
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
        with idx.writing():   # one lock for the whole add: recovery, the stored files and their rows
            remove_unowned(idx, self.uploads)
            files = self._add_uploads(idx, uploads)
        count = collections.Counter(f.status for f in files)
        return AddResponse(added=count["added"], updated=count["updated"], unchanged=count["unchanged"],
                           failed=count["failed"], images=len(idx), took_ms=(time.perf_counter() - started) * 1000,
                           files=files)

    def _add_uploads(self, idx: Index, uploads: list[UploadFile]) -> list[AddedFile]:
        self.uploads.mkdir(parents=True, exist_ok=True)
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
            before = {str(p): self._live_id(idx, str(p)) for _, p, _ in stored}
            report = idx.add([p for _, p, _ in stored], root=self.uploads) if stored else None
        except BaseException:
            for _, p, created in stored:
                if created and self._live_id(idx, str(p)) is None:
                    p.unlink(missing_ok=True)
            raise
        failed = dict(report.failed) if report else {}
        seen: set[str] = set()
        for pos, p, created in stored:
            key, entry = str(p), files[pos]
            rec = idx.live_record(key)
            if key in failed or rec is None:
                entry.error = f"{entry.filename or 'file'}: {failed.get(key, 'not indexed')}"
                if created and rec is None:
                    p.unlink(missing_ok=True)
                continue
            entry.id, entry.name = rec.id, rec.name
            if key in seen or before[key] == rec.id:
                entry.status = "unchanged"
            else:
                entry.status = "added" if before[key] is None else "updated"
            seen.add(key)
        return files

    @staticmethod
    def _live_id(idx: Index, path: str) -> int | None:
        rec = idx.live_record(path)
        return None if rec is None else rec.id

    def folder_root(self, folder: str) -> tuple[Path, Path]:
        """(the folder's real path, the allowed root holding it), or a 403/404 ApiError."""
        if not self.allow_folders:
            raise ApiError(403, "folders not allowed", "adding a server-side folder is off; start the server with "
                                                       "--allow-folder DIR to allow folders inside DIR")
        problem = path_problem(folder)
        if problem:
            raise ApiError(422, "bad folder", f"folder {folder[:100]!r}: {problem}")
        try:
            real = Path(os.path.realpath(folder))
            root = next((r for r in self.allow_folders if real.is_relative_to(r)), None)
            if root is None:
                raise ApiError(403, "folder not allowed", f"{folder}: outside the folders this server may read "
                                                          f"({', '.join(map(str, self.allow_folders))})")
            if not real.is_dir():
                raise ApiError(404, "no such folder", f"{folder}: not a folder on the server")
        except OSError as e:
            raise ApiError(422, "bad folder", f"folder {folder[:100]!r}: {e.strerror or e}") from None
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
        with idx.writing():
            self.live_record(idx, image_id)   # removed by another process meanwhile: 404
            remove_owned(idx, rec.path, self.uploads)   # an upload's file belongs to the index: it goes with its row
        return DeleteResponse(id=rec.id, name=rec.name, images=len(idx))

    # --- stats --------------------------------------------------------------------------------------
    def stats(self) -> StatsResponse:
        idx = self.index()
        snap = idx.snapshot()
        columns = []
        for col in snap.columns.values():
            items = snap.items[col.name]
            columns.append(ColumnBytes(name=col.name, file=col.file, dtype=col.dtype, shape=list(col.shape),
                                       ragged=col.ragged, items=items, committed_bytes=items * col.item_bytes,
                                       bytes_on_disk=sum(bytes_of(f / col.file) for f in self.folders)))
        database = sum(bytes_of(f / (DATABASE + s)) for f in self.folders for s in ("", "-wal", "-shm"))
        model = sum(bytes_of(f / MODEL) for f in self.folders)
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


# Linux's limits on a path (PATH_MAX) and on one of its parts (NAME_MAX), in bytes
MAX_PATH_BYTES, MAX_NAME_BYTES = 4096, 255


def path_problem(path: str) -> str | None:
    """Why a path sent by a client cannot name a file on the server (None: it can)."""
    if "\0" in path:
        return "a path cannot contain a NUL character"
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if len(raw) > MAX_PATH_BYTES:
        return f"{len(raw)} bytes long; a path has at most {MAX_PATH_BYTES}"
    longest = max((len(part.encode()) for part in path.split("/")), default=0)
    if longest > MAX_NAME_BYTES:
        return f"a part of it is {longest} bytes long; a file or folder name has at most {MAX_NAME_BYTES}"
    return None


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


