"""Image files as the service reads them: what a file's header says (size, format) without decoding it, the
bytes of an indexed file re-checked at the moment it is opened, and thumbnails. Every reader goes through
`images.open_limited`, the one decompression-bomb rule `load_image` applies too."""
from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from . import images as imgs

# Pillow format -> the extension a file of that format is stored under (the formats the indexer lists)
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp",
                     "PPM": ".ppm"}
# the largest indexed file served back whole (bytes); a larger one is refused, not read into memory
MAX_SERVED_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ImageInfo:
    width: int    # after EXIF orientation
    height: int
    format: str   # Pillow's name, e.g. JPEG

    @property
    def media_type(self) -> str:
        return Image.MIME.get(self.format, "application/octet-stream")


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


def inspect_image(source, label: str, max_pixels: int | None = None) -> ImageInfo:
    """Width, height (after EXIF orientation) and format of an image from its header alone (`source`: a path or
    a binary file). `ImageTooLarge` above the pixel limit (never decoded), `ImageLoadError` for bytes that are not
    an image; both name `label`."""
    with imgs.open_limited(source, label, max_pixels) as im:
        width, height, fmt = im.width, im.height, im.format or ""
        orientation = exif_orientation(im)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(width, height, fmt)


def read_image_file(path: str | Path, label: str, max_pixels: int | None = None) -> tuple[bytes, ImageInfo]:
    """The bytes of an indexed image file and what its header says, with the rules that let it in re-applied
    now: `path` (stored as its real path when it was added) must still be its own real path (no symbolic link
    anywhere on it: a file swapped for a link is refused), be opened without following a link (O_NOFOLLOW), be a
    regular file, and hold an image format the indexer lists. ImageLoadError (naming `label`) otherwise."""
    path = os.fspath(path)
    if not os.path.isabs(path) or os.path.realpath(path) != os.path.normpath(path):
        raise imgs.ImageLoadError(label, "its file is no longer the one that was indexed (a symbolic link now "
                                         "stands on its path)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise imgs.ImageLoadError(label, f"its file cannot be opened ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise imgs.ImageLoadError(label, "its file is no longer a regular file")
        if st.st_size > MAX_SERVED_BYTES:
            raise imgs.ImageLoadError(label, f"its file is larger than {MAX_SERVED_BYTES} bytes")
        data = f.read(MAX_SERVED_BYTES + 1)
    info = inspect_image(io.BytesIO(data), label, max_pixels)
    if info.format not in FORMAT_EXTENSIONS:
        raise imgs.ImageLoadError(label, f"its file is a {info.format or 'unknown'} file, not an indexed image format")
    return data, info


def make_thumbnail(data: bytes, label: str, size: int, max_pixels: int | None = None) -> bytes:
    """JPEG bytes of an image (its file's bytes) shrunk so its longest side is `size` (never enlarged),
    EXIF-oriented; ImageLoadError if it does not decode."""
    image = imgs.decode_image(io.BytesIO(data), label, max_pixels=max_pixels)
    scale = min(1.0, size / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
