"""Files the service reads and writes: image-header inspection, uploads, thumbnails, worker counts."""
from __future__ import annotations

import collections
import io
import logging
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TypeVar

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from ..core import boxes
from ..extract import images as imgs


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
# Pillow format -> the extension an upload is stored under (formats the indexer lists)
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp",
                     "PPM": ".ppm"}
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


def exif_orientation(im: Image.Image) -> int:
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
                orientation = exif_orientation(im)
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


