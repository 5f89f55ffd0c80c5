"""`instar serve`: the search service (FastAPI) and its web page.

    app = create_app("my.index", token="s3cret")      # then: uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (request and response models below; OpenAPI at /openapi.json, interactive docs at /docs):

    GET    /                        the web page (instar/web/: plain HTML, CSS and JS, no build step)
    POST   /search                  multipart: image (file), box "x0,y0,x1,y1", k, filter, rerank, expansion, set
    GET    /images/{id}             the stored image file of row `id`
    GET    /images/{id}/thumbnail   JPEG, longest side `size` (default 256), cached in memory
    POST   /images                  multipart: files (uploads, kept in INDEX/uploads/) or folder (server side)
    DELETE /images/{id}             tombstone the image (an uploaded file is deleted too)
    GET    /health, GET /stats

Errors. Every refused request is a 4xx JSON body {"error": "<what>", "detail": <why / where>}: a bad image
or box, an unknown id (404), a request body above `max_upload_bytes` or an image above the loader's pixel
limit (413), a bad k or an unknown search setting (422), a missing or wrong bearer token (401). Ids are
integers (store rows); names and client file names are never used as paths: uploads are stored under
generated names (the SHA-256 of their bytes), and a server-side folder must lie inside a root the server was
started with (`allow_folders`).

Concurrency (the store's rules, instar/store.py):
- The index stays open. Each worker thread has its own read-only SQLite connection (a connection belongs to
  its thread) over one shared `Extractor`: the preset's learned model is loaded once, and a trunk that loads
  lazily (`CNNFeatures.model`) is loaded here, at start-up, so no request pays for it and no two threads race
  to load it.
- Searches run in a pool of `workers` threads; every search takes a fresh store snapshot, so it sees the
  images committed before it started and never a half-added one (a batch becomes visible in one SQLite
  transaction, after its bytes are on disk). Torch and faiss release the GIL in their kernels; torch uses
  `torch_threads` intra-op threads per forward, `workers * torch_threads` ~ the CPU count.
- Writes (POST /images, DELETE /images/{id}) run one at a time in a single writer thread holding the store's
  writer lock; the request waits for its job and gets the counts. Another process writing to the same index
  (`instar index`) makes a write answer 409.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import io
import logging
import math
import mimetypes
import os
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, TypeVar

from fastapi import Depends, FastAPI, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import images as imgs
from .index import DATABASE, MODEL, Index, IndexError_
from .presets import PresetError
from .search import SEARCH_SECTIONS, search
from .stages import fitting_entries
from .store import Store, StoreBusy, StoreError, connect

log = logging.getLogger(__name__)

UPLOADS = "uploads"
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_K = 1000
DEFAULT_MAX_FILES = 100
THUMBNAIL_SIZE = 256
MAX_THUMBNAIL_SIZE = 1024
THUMBNAIL_CACHE_BYTES = 64 * 1024 * 1024
TOKEN_ENV = "INSTAR_TOKEN"
SEARCH_FIELDS = ("image", "box", "k", "filter", "rerank", "expansion", "set")
ADD_FIELDS = ("files", "folder")
# Pillow format -> the extension an upload is stored under (formats the indexer lists)
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp",
                     "PPM": ".ppm"}
T = TypeVar("T")


# --- models --------------------------------------------------------------------------------------------
Box = tuple[float, float, float, float]


class ErrorResponse(BaseModel):
    error: str = Field(description="What was refused, in a few words.")
    detail: Any = Field(None, description="Why, and where (a message, or the list of invalid fields).")


class QueryInfo(BaseModel):
    filename: Optional[str] = Field(None, description="The uploaded file's name, as the client sent it.")
    width: int = Field(description="Query image width in pixels (after EXIF orientation).")
    height: int
    box: Optional[Box] = Field(None, description="The query box, clipped to the image; null = the whole image.")


class SearchHit(BaseModel):
    rank: int
    score: float
    id: int = Field(description="The image's id (its store row); GET /images/{id} serves it.")
    name: str = Field(description="The stored name (relative to the folder it was added from).")
    width: int = Field(description="The image's width in pixels; `box` is in these pixels.")
    height: int
    box: Box = Field(description="Where the object is, (x0, y0, x1, y1) original pixels; the whole image when "
                                 "the preset does not localise.")
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    query: QueryInfo
    k: int = Field(description="Hits asked for (fewer when the index holds fewer images).")
    settings: dict[str, dict[str, Any]] = Field(description="The search-time sections used (filter, rerank, expansion).")
    took_ms: float = Field(description="Server time for this search, in milliseconds.")
    hits: list[SearchHit]


class AddedFile(BaseModel):
    filename: Optional[str] = Field(None, description="The uploaded file's name, or the path of a folder's file.")
    status: Literal["added", "updated", "unchanged", "failed"]
    id: Optional[int] = None
    name: Optional[str] = None
    error: Optional[str] = None


class AddResponse(BaseModel):
    added: int
    updated: int
    unchanged: int
    failed: int
    images: int = Field(description="Live images in the index afterwards.")
    took_ms: float
    files: list[AddedFile] = Field(description="Every uploaded file; for a folder, only the files that failed.")


class DeleteResponse(BaseModel):
    id: int
    name: str
    removed: bool = True
    images: int


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    images: int


class ColumnBytes(BaseModel):
    name: str
    file: str
    dtype: str
    shape: list[Optional[int]]
    ragged: bool
    items: int
    committed_bytes: int
    bytes_on_disk: int


class DiskUsage(BaseModel):
    columns: list[ColumnBytes]
    database: int = Field(description="index.sqlite with its WAL files.")
    model: int = Field(description="model.npz, the learned arrays.")
    uploads: int = Field(description="Files uploaded through POST /images.")
    total: int


class Provenance(BaseModel):
    features: str = Field(description="Local features or CNN trunk (and the layer it is tapped at).")
    weights: Optional[str] = Field(description="The preset's weights setting (null: weight-free).")
    weights_source: Optional[str] = Field(description="Where the weights were read from.")
    learned: list[str] = Field(description="Sections fitted on training images (codebook, whitening, ...).")
    trained_on: Optional[str]
    created_at: Optional[float]


class PresetInfo(BaseModel):
    name: str
    description: str
    reference: str
    sections: dict[str, dict[str, Any]]


class Limits(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    min_side: int
    max_k: int
    max_files: int
    thumbnail_size: int
    max_thumbnail_size: int


class StatsResponse(BaseModel):
    images: int = Field(description="Live images.")
    removed: int
    rows: int = Field(description="Committed rows, live and removed.")
    dim: int
    failures: int = Field(description="Files that could not be indexed (recorded with their reason).")
    stores_regions: bool
    preset: PresetInfo
    search_choices: dict[str, list[str]] = Field(description="Methods each search-time section can be set to "
                                                             "for this index.")
    bytes: DiskUsage
    model: Provenance
    limits: Limits
    token_required: bool = Field(description="Whether POST /images and DELETE /images/{id} need a bearer token.")
    folders_allowed: bool
    workers: int
    torch_threads: int


ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 422)}


# --- errors --------------------------------------------------------------------------------------------
class ApiError(Exception):
    """A refused request: HTTP status, a short `error` and a `detail`."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class BodyTooLarge(StarletteHTTPException):
    """A request body above the limit (an HTTPException, so the framework's body parsing lets it through)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


def _error(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse a request whose body is larger than `limit` bytes with a JSON 413, from its
    Content-Length before reading anything, or while reading a body sent without one."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _error(413, "upload too large", f"the request body ({int(declared)} bytes) is larger than the "
                         f"limit of {self.limit} bytes")(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:
            if started:
                raise
            await _error(413, "upload too large", e.detail)(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: no content sniffing anywhere; the page (/ and /static/) may load only its own scripts,
    styles and images (FastAPI's /docs loads Swagger UI's, so it is left as the framework serves it)."""

    CSP = (b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
           b"object-src 'none'; frame-ancestors 'none'; base-uri 'none'")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        page = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if page:
                    headers.append((b"content-security-policy", self.CSP))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


# --- helpers -------------------------------------------------------------------------------------------
def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Search threads: one per core, at most 4 (each forward then gets the remaining cores as torch threads)."""
    return max(1, min(4, cpu_count()))


def parse_box(text: str) -> Box:
    """'x0,y0,x1,y1' -> four finite floats, or a 422 ApiError saying what is wrong."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ApiError(422, "bad box", f"box {text!r}: expected four numbers x0,y0,x1,y1 (original pixels)") from None
    if len(values) != 4:
        raise ApiError(422, "bad box", f"box {text!r}: expected four numbers x0,y0,x1,y1, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ApiError(422, "bad box", f"box {text!r}: every value must be a finite number")
    return tuple(values)  # type: ignore[return-value]


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag from what the header holds (PNG's getexif would decode the whole image)."""
    if im.format == "PNG":
        raw = im.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(0x0112, 1)
    return im.getexif().get(0x0112, 1)


def inspect_image(path: Path, label: str, max_pixels: int) -> tuple[int, int, str]:
    """(width, height after EXIF orientation, Pillow format) of an uploaded file from its header alone; 413 for
    an image above the pixel limit (a decompression bomb is refused before it is decoded), 422 for bytes that
    are not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height, fmt = im.width, im.height, im.format or ""
                if width * height > max_pixels:
                    raise ApiError(413, "image too large", f"{label}: declares {width}x{height} pixels, above the "
                                                           f"limit of {max_pixels} pixels ({imgs.MAX_PIXELS_ENV}); "
                                                           "not decoded")
                orientation = _orientation(im)
    except Image.DecompressionBombError:
        try:
            size = imgs._declared_size(path)
        except OSError:
            size = None
        declared = f"{size[0]}x{size[1]} pixels" if size else "more pixels than the decoder allows"
        raise ApiError(413, "image too large", f"{label}: declares {declared}, above the limit of {max_pixels} "
                                               f"pixels ({imgs.MAX_PIXELS_ENV}); not decoded") from None
    except UnidentifiedImageError:
        raise ApiError(422, "bad image", f"{label}: not an image format Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(422, "bad image", f"{label}: damaged or truncated image data ({e})") from None
    if width < 1 or height < 1:
        raise ApiError(422, "bad image", f"{label}: declares an empty {width}x{height} image")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height, fmt


def _save_upload(upload: UploadFile, directory: Path | None = None, suffix: str = ".upload") -> Path:
    """Copy an upload to a new temporary file (the extractor reads files); the caller deletes it."""
    fd, name = tempfile.mkstemp(prefix=".instar-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, out, 1 << 20)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _bytes_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class ThumbnailCache:
    """A thread-safe LRU of encoded thumbnails, bounded in bytes; keys are (row, size): committed rows never
    change, so an entry never goes stale (a removed row is refused before the cache is asked)."""

    def __init__(self, max_bytes: int = THUMBNAIL_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[tuple[int, int], bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[int, int], data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


def make_thumbnail(path: Path | str, size: int, max_pixels: int) -> bytes:
    """JPEG bytes of an image shrunk so its longest side is `size` (never enlarged), EXIF-oriented."""
    image = imgs.load_image(path, max_pixels=max_pixels)
    scale = min(1.0, size / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# --- the service ---------------------------------------------------------------------------------------
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
        tmp = _save_upload(upload)
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
            tmp = _save_upload(up, self.uploads, ".part")
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
                                       bytes_on_disk=_bytes_of(self.path / col.file)))
        database = sum(_bytes_of(self.path / (DATABASE + s)) for s in ("", "-wal", "-shm"))
        model = _bytes_of(self.path / MODEL)
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


def _overrides(filter_: str | None, rerank: str | None, expansion: str | None, sets: list[str] | None) -> dict[str, str]:
    out = {}
    for section, value in (("filter", filter_), ("rerank", rerank), ("expansion", expansion)):
        if value is not None and value.strip():
            out[f"{section}.method"] = value.strip()
    for item in sets or []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ApiError(422, "bad search setting", f"set {item!r}: expected SECTION.KEY=VALUE, e.g. rerank.top=50")
        if key.partition(".")[0] not in SEARCH_SECTIONS:
            raise ApiError(422, "bad search setting", f"set {item!r}: only search-time settings can change at search "
                                                      f"time ({', '.join(s + '.*' for s in SEARCH_SECTIONS)})")
        out[key] = value.strip()
    return out


async def _refuse_unknown_fields(request: Request, known: Sequence[str]) -> None:
    form = await request.form()   # parsed once; the framework has already read it
    unknown = sorted(set(form.keys()) - set(known))
    if unknown:
        raise ApiError(422, "unknown field", f"{', '.join(unknown)}: not a field of {request.url.path} "
                                             f"(fields: {', '.join(known)})")


def create_app(index_path: Path | str, *, token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int | None = None,
               max_k: int = DEFAULT_MAX_K, max_files: int = DEFAULT_MAX_FILES,
               allow_folders: Sequence[Path | str] = (), workers: int | None = None,
               torch_threads: int | None = None) -> FastAPI:
    """The service over the index at `index_path` (opened now: a bad index raises `IndexError_`).

    `token`: bearer token required by POST /images and DELETE /images/{id} (None: open). `max_upload_bytes`:
    the largest request body. `max_pixels`: the loader's pixel limit (default: $INSTAR_MAX_PIXELS or 40 MP).
    `max_k`: most hits one search returns. `max_files`: most files one POST /images takes. `allow_folders`:
    roots a server-side folder given to POST /images must lie in (none: folders are refused). `workers`:
    search threads (default: one per core, at most 4); `torch_threads`: intra-op threads per forward
    (default: cores / workers), applied when the app starts.
    """
    service = Service(index_path, token=token, max_upload_bytes=max_upload_bytes,
                      max_pixels=imgs.max_pixels_limit(max_pixels), max_k=max_k, max_files=max_files,
                      allow_folders=allow_folders, workers=workers or default_workers(), torch_threads=torch_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.apply_torch_threads()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="instar", version="0.1.0", lifespan=lifespan,
                  description="Instance-level image search: upload a photo (and a box on it), get every indexed "
                              "photo of the same object with where it is. Errors are JSON {error, detail}.")
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="Needed by the routes that change the index when the server "
                                                      "was started with --token (or $INSTAR_TOKEN).")

    def require_token(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        problem = service.token_problem(request.headers.get("authorization"))
        if problem:
            raise ApiError(401, "unauthorized", problem, headers={"WWW-Authenticate": "Bearer"})

    # --- error handlers ----------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")),
                   "message": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        name = first["field"] or "request"
        return _error(422, f"invalid {name}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        error = {404: "not found", 405: "method not allowed", 413: "upload too large"}.get(exc.status_code, "bad request")
        return _error(exc.status_code, error, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(StoreBusy)
    async def busy(request: Request, exc: StoreBusy):
        return _error(409, "index busy", "another process is writing to this index; try again when it has finished")

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError):
        log.error("store error: %s", exc)
        return _error(500, "index error", "the index could not be read or written; see the server's log")

    # --- routes ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(web_dir() / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=web_dir()), name="static")

    @app.post("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
    async def search_route(
            request: Request,
            image: UploadFile = File(..., description="The query photo (any format Pillow reads)."),
            box: Optional[str] = Form(None, description="Query box 'x0,y0,x1,y1' in the photo's original pixels "
                                                        "(after EXIF orientation); omitted = the whole photo."),
            k: Optional[int] = Form(None, ge=1, le=service.max_k, description="Number of hits (default: the preset's "
                                                                              f"search.k, at most {service.max_k})."),
            filter: Optional[str] = Form(None, description="filter.method for this search (e.g. knn, regional)."),
            rerank: Optional[str] = Form(None, description="rerank.method for this search (e.g. none, ca-sr)."),
            expansion: Optional[str] = Form(None, description="expansion.method for this search (none, aqe, alpha-qe)."),
            sets: Optional[list[str]] = Form(None, alias="set", description="Search-time setting SECTION.KEY=VALUE "
                                                                            "(repeatable), e.g. rerank.top=50."),
    ) -> SearchResponse:
        """Rank the index for a query photo (or a box on it); each hit says where the object is."""
        await _refuse_unknown_fields(request, SEARCH_FIELDS)
        overrides = _overrides(filter, rerank, expansion, sets)
        return await service.run_search(service.search, image, box, k, overrides)

    @app.get("/images/{id}", response_class=FileResponse, responses={**ERRORS, 200: {
        "content": {"image/*": {}}, "description": "The stored image file."}}, tags=["images"])
    async def image_route(id: int = PathParam(..., description="The image's id (from a hit).")):
        """The stored image file, as it was indexed."""
        path, media = await service.run_search(service.image_file, id)
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=300"})

    @app.get("/images/{id}/thumbnail", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
             response_class=Response, tags=["images"])
    async def thumbnail_route(id: int = PathParam(..., description="The image's id."),
                              size: int = Query(THUMBNAIL_SIZE, ge=16, le=MAX_THUMBNAIL_SIZE,
                                                description="Longest side in pixels (never enlarged).")):
        """A JPEG of the image, longest side `size` (cached in memory)."""
        data = await service.run_search(service.thumbnail, id, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/images", response_model=AddResponse, responses=ERRORS, tags=["images"],
              dependencies=[Depends(require_token)])
    async def add_route(
            request: Request,
            files: Optional[list[UploadFile]] = File(None, description="Photos to add; stored in the index's "
                                                                       "uploads/ folder under generated names."),
            folder: Optional[str] = Form(None, description="A folder on the server to add (recursively); must lie "
                                                           "inside a folder the server allows (--allow-folder)."),
    ) -> AddResponse:
        """Add uploaded photos, or a server-side folder, to the index (one write at a time; searches go on)."""
        await _refuse_unknown_fields(request, ADD_FIELDS)
        if files and folder:
            raise ApiError(422, "files or folder", "send either files (uploads) or folder (a path on the server), "
                                                   "not both")
        if not files and not folder:
            raise ApiError(422, "nothing to add", "send files (one or more uploads) or folder (a path on the server)")
        if files:
            if len(files) > service.max_files:
                raise ApiError(413, "too many files", f"{len(files)} files; at most {service.max_files} per request")
            return await service.run_write(service.add_uploads, files)
        return await service.run_write(service.add_folder, folder)

    @app.delete("/images/{id}", response_model=DeleteResponse, responses=ERRORS, tags=["images"],
                dependencies=[Depends(require_token)])
    async def delete_route(id: int = PathParam(..., description="The image's id.")) -> DeleteResponse:
        """Remove an image from the index (its row becomes a tombstone; search never returns it again)."""
        return await service.run_write(service.delete, id)

    @app.get("/health", response_model=HealthResponse, tags=["service"])
    async def health() -> HealthResponse:
        """The index can be read: a fresh snapshot's live image count."""
        n = await service.run_search(lambda: service.index().snapshot().n_live)
        return HealthResponse(images=n)

    @app.get("/stats", response_model=StatsResponse, tags=["service"])
    async def stats() -> StatsResponse:
        """Images, preset and its sections, bytes on disk per column, model provenance, limits."""
        return await service.run_search(service.stats)

    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, limit=service.max_upload_bytes)
    return app
