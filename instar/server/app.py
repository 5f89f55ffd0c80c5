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

Concurrency (the store's rules, instar/store/):
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

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional, Sequence

from fastapi import Depends, FastAPI, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from swagger_ui_bundle import swagger_ui_path

from ..extract import images as imgs
from ..store import StoreBusy, StoreError

from .files import (ADD_FIELDS, DEFAULT_MAX_FILES, DEFAULT_MAX_K, DEFAULT_MAX_UPLOAD_BYTES, MAX_THUMBNAIL_SIZE,
                    SEARCH_FIELDS, THUMBNAIL_SIZE, default_workers)
from .middleware import ApiError, BodyLimit, RequestGuard, SecurityHeaders, allowed_host_names, error_response
from .models import ERRORS, AddResponse, DeleteResponse, HealthResponse, SearchResponse, StatsResponse
from .service import Service, refuse_unknown_fields, search_overrides, web_dir

log = logging.getLogger(__name__)


def create_app(index_path: Path | str, *, token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int | None = None,
               max_k: int = DEFAULT_MAX_K, max_files: int = DEFAULT_MAX_FILES,
               allow_folders: Sequence[Path | str] = (), workers: int | None = None,
               torch_threads: int | None = None, host: str = "127.0.0.1",
               allowed_hosts: Sequence[str] = ()) -> FastAPI:
    """The service over the index at `index_path` (opened now: a bad index raises `IndexError_`).

    `token`: bearer token required by POST /images and DELETE /images/{id} (None: open). `max_upload_bytes`:
    the largest request body. `max_pixels`: the loader's pixel limit (default: $INSTAR_MAX_PIXELS or 40 MP).
    `max_k`: most hits one search returns. `max_files`: most files one POST /images takes. `allow_folders`:
    roots a server-side folder given to POST /images must lie in (none: folders are refused). `workers`:
    search threads (default: one per core, at most 4); `torch_threads`: intra-op threads per forward
    (default: cores / workers), applied when the app starts. `host`: the address the server is bound to; a
    request's Host header must name it (or a loopback name when it is a loopback or wildcard address) or one of
    `allowed_hosts` ('*': any). A POST, PUT, PATCH or DELETE sent by a page of another origin is refused (403).
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

    app = FastAPI(title="instar", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
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
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")),
                   "message": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        name = first["field"] or "request"
        return error_response(422, f"invalid {name}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        error = {404: "not found", 405: "method not allowed", 413: "upload too large"}.get(exc.status_code, "bad request")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:   # every method some route takes at this path, not only the first route's
            methods = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] is not Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            headers["Allow"] = ", ".join(sorted(methods))
        return error_response(exc.status_code, error, exc.detail, headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal error", "the server failed on this request; see its log")

    @app.exception_handler(StoreBusy)
    async def busy(request: Request, exc: StoreBusy):
        return error_response(409, "index busy", "another process is writing to this index; try again when it has finished")

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError):
        log.error("store error: %s", exc)
        return error_response(500, "index error", "the index could not be read or written; see the server's log")

    # --- routes ------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(web_dir() / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=web_dir()), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI from the swagger-ui-bundle package's files, served here: /docs works offline."""
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="instar API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

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
            sets: list[str] = Form([], alias="set", description="Search-time setting SECTION.KEY=VALUE "
                                                                "(repeatable), e.g. rerank.top=50."),
    ) -> SearchResponse:
        """Rank the index for a query photo (or a box on it); each hit says where the object is."""
        await refuse_unknown_fields(request, SEARCH_FIELDS)
        overrides = search_overrides(filter, rerank, expansion, sets)
        return await service.run_search(service.search, image, box, k, overrides)

    @app.get("/images/{id}", response_class=Response, responses={**ERRORS, 200: {
        "content": {"image/*": {}}, "description": "The stored image file."}}, tags=["images"])
    async def image_route(id: int = PathParam(..., description="The image's id (from a hit).")):
        """The stored image file, as it was indexed (re-checked as it is opened: still the indexed regular file,
        no symbolic link on its path, an image by its content; 404 otherwise)."""
        data, media = await service.run_search(service.image_file, id)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=300"})

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
            folder: Optional[str] = Form(None, min_length=1, max_length=4096,
                                         description="A folder on the server to add (recursively); must lie "
                                                     "inside a folder the server allows (--allow-folder)."),
    ) -> AddResponse:
        """Add uploaded photos, or a server-side folder, to the index (one write at a time; searches go on)."""
        await refuse_unknown_fields(request, ADD_FIELDS)
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

    app.add_middleware(BodyLimit, limit=service.max_upload_bytes)
    app.add_middleware(RequestGuard, hosts=allowed_host_names(host, allowed_hosts), token_problem=service.token_problem,
                       needs_token=lambda method, path: (method, path.rstrip("/")) == ("POST", "/images")
                       or (method == "DELETE" and path.startswith("/images/")))
    app.add_middleware(SecurityHeaders)   # outermost: the guard's refusals get the headers too
    return app
