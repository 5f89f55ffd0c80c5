"""Files the service writes (uploads), the thumbnail cache, box parsing and worker counts."""
from __future__ import annotations

import collections
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TypeVar

from fastapi import UploadFile

from ..core import boxes


from .middleware import ApiError
from .models import Box

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
T = TypeVar("T")


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
    try:
        return boxes.parse_box(text)
    except ValueError as e:
        raise ApiError(422, "bad box", f"box {text!r}: {e} (original pixels)") from None


def save_upload(upload: UploadFile, directory: Path | None = None, suffix: str = ".upload") -> Path:
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


def bytes_of(path: Path) -> int:
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
