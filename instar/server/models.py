"""The HTTP API's request and response models (pydantic): what /openapi.json and /docs describe."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field



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


