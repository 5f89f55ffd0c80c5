"""Image stage: load any common format, apply EXIF orientation, convert to 8-bit RGB, crop and resize.

Limits and rules (each failure is an `ImageLoadError` naming the file and the problem):

- Pixel limit: an image whose header declares more than `max_pixels` pixels is refused BEFORE it is decoded
  (`Image.open` reads only the header). Default 40 megapixels (`DEFAULT_MAX_PIXELS`), below Pillow's own
  decompression-bomb limits (89 MP warning, 179 MP error), so Pillow's `DecompressionBombWarning` never shows
  and its `DecompressionBombError` (a header declaring more than Pillow's hard limit) is reported as the same
  refusal. Change it with the environment variable `INSTAR_MAX_PIXELS` or the `max_pixels=` keyword argument
  (Pillow's hard limit still applies above 179 MP).
- 16-bit and wider greyscale: Pillow's own conversion clips them to 255 (a 16-bit photo comes out white).
  `I;16`, `I;16B`, `I;16L` images are scaled by their nominal bit depth, value * 255 / 65535, so brightness
  means the same in every 16-bit file. 32-bit integer (`I`) and float (`F`) images carry no reliable bit
  depth, so their actual value range decides: values within 0..255 are kept, within 0..65535 scaled as
  16-bit, floats within 0..1 multiplied by 255, anything else stretched linearly from its minimum to its maximum.
- Minimum useful size: after the query crop and the shrink to the preset's longest side, the shorter side must
  be at least `MIN_SIDE` (32) pixels; smaller (a 1x1 image, a 20000x20 strip shrunk to 1024x1, a sub-pixel
  box) holds too little content for any descriptor and is refused.
- Other behaviours: EXIF orientation applied; CMYK, palette, grey and RGBA converted to RGB (alpha dropped);
  the first frame of a multi-frame GIF/TIFF; truncated or damaged data refused; an empty file refused.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Annotated, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.protocols import ImageStage as ImageStageProtocol
from ..core.registry import IMAGE, Range

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_SIZE = 1024
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "INSTAR_MAX_PIXELS"
MIN_SIDE = 32

Box = tuple[float, float, float, float]


class ImageLoadError(ValueError):
    """An image file that cannot be read or used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel limit in force: the argument, else $INSTAR_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    if max_pixels is not None:
        value, source = max_pixels, "max_pixels"
    else:
        env = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        value, source = env, MAX_PIXELS_ENV
    try:
        limit = int(str(value).replace("_", ""))
    except ValueError:
        raise ValueError(f"{source}={value!r}: expected a whole number of pixels, e.g. 40000000") from None
    if limit < 1:
        raise ValueError(f"{source}={value!r}: the pixel limit must be at least 1")
    return limit


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n} pixels"


def _declared_size(source) -> tuple[int, int] | None:
    """Width and height from the header alone, without Pillow's decompression-bomb check (only used to name the
    size of a file Pillow refused to open); `source` is a path or a seekable binary file."""
    Image.init()
    fp = source if hasattr(source, "read") else open(source, "rb")
    try:
        fp.seek(0)
        prefix = fp.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(prefix):
                continue
            fp.seek(0)
            try:
                return factory(fp, str(getattr(fp, "name", "image"))).size
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError):
                continue
    finally:
        if fp is not source:
            fp.close()
    return None


class ImageTooLarge(ImageLoadError):
    """An image whose header declares more pixels than the limit; refused before anything is decoded."""


def _too_many_pixels(path: Path, width: int | None, height: int | None, pixels: int, limit: int) -> ImageTooLarge:
    size = f"{width}x{height} pixels ({_megapixels(pixels)})" if width else f"{pixels} pixels ({_megapixels(pixels)})"
    return ImageTooLarge(path, f"declares {size}, above the limit of {_megapixels(limit)} "
                               f"(set {MAX_PIXELS_ENV} to allow more); not decoded")


@contextlib.contextmanager
def open_limited(source, path: Path | str, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """`Image.open(source)` (a path or a binary file) under the one decompression-bomb rule every reader of
    images shares (`load_image`, `image_files.inspect_image`, thumbnails): a header declaring more than the pixel
    limit (or an empty image) is refused before anything is decoded. Any failure, in the header or in what the
    caller decodes inside the block, is an `ImageLoadError` naming `path`."""
    limit = max_pixels_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            # our limit is lower than Pillow's warning threshold and is checked below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                if width * height > limit:
                    raise _too_many_pixels(Path(path), width, height, width * height, limit)
                if width < 1 or height < 1:
                    raise ImageLoadError(path, f"declares an empty {width}x{height} image")
                yield im
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        size = _declared_size(source)
        m = re.search(r"\((\d+) pixels\)", str(e))
        pixels = size[0] * size[1] if size else int(m.group(1)) if m else 0
        raise _too_many_pixels(Path(path), *(size or (None, None)), pixels, limit) from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image format Pillow can identify") from None
    except OSError as e:
        if e.errno is not None:
            raise ImageLoadError(path, f"cannot read file ({e.strerror})") from None
        raise ImageLoadError(path, f"damaged or truncated image data ({e})") from None
    except (SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(path, f"damaged or truncated image data ({e})") from None


def to_8bit_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, scaling 16-bit, 32-bit and float greyscale as the module docstring says."""
    mode = image.mode
    if mode.startswith("I;16"):
        a = np.asarray(image).astype(np.float32) * np.float32(255.0 / 65535.0)
    elif mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(image).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1 and mode == "F":
            a = a * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a * (255.0 / 65535.0)
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    else:
        return image.convert("RGB")
    grey = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


def load_image(path: Path | str, *, max_pixels: int | None = None) -> Image.Image:
    """Read `path` fully into an 8-bit RGB PIL image with its EXIF orientation applied.

    The header's size is checked against the pixel limit (see the module docstring) before anything is decoded.
    """
    path = Path(path)
    limit = max_pixels_limit(max_pixels)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageLoadError(path, "symbolic link loop") from None
        if e.errno == errno.ENOENT:
            raise ImageLoadError(path, "broken symbolic link (its target does not exist)" if os.path.islink(path)
                                 else "no such file") from None
        raise ImageLoadError(path, f"cannot read file ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(path, "is a folder, not an image file")
    if st.st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    return decode_image(path, path, max_pixels=limit)


def decode_image(source, path: Path | str, *, max_pixels: int | None = None) -> Image.Image:
    """Decode `source` (a path or a binary file, e.g. bytes already read) into an 8-bit RGB image with its EXIF
    orientation applied, under the pixel limit; `path` names it in errors."""
    with open_limited(source, path, max_pixels) as im:
        im.load()
        return to_8bit_rgb(ImageOps.exif_transpose(im))


def check_box(box: Sequence[float], width: int, height: int, *, source: str = "box") -> Box:
    """Validate an (x0, y0, x1, y1) pixel box against an image of `width` x `height`; clip it to the image."""
    if len(box) != 4:
        raise ValueError(f"{source}: a box needs 4 numbers x0,y0,x1,y1, got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    text = f"{x0:g},{y0:g},{x1:g},{y1:g}"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{source}: box {text} has a value that is not a finite number")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{source}: box {text} is empty (need x1 > x0 and y1 > y0)")
    cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
    if not (cx1 > cx0 and cy1 > cy0):
        raise ValueError(f"{source}: box {text} lies outside the {width}x{height} image")
    return cx0, cy0, cx1, cy1


def crop_box(image: Image.Image, box: Sequence[float], *, source: str = "box") -> Image.Image:
    """Crop `image` to the pixel box (x0, y0, x1, y1), rounded to whole pixels (revisitop's query crop)."""
    x0, y0, x1, y1 = check_box(box, image.width, image.height, source=source)
    r = [int(round(v)) for v in (x0, y0, x1, y1)]
    r[2] = max(r[2], r[0] + 1)
    r[3] = max(r[3], r[1] + 1)
    return image.crop(tuple(r))


def resize_longest(image: Image.Image, max_size: int | None = DEFAULT_MAX_SIZE) -> Image.Image:
    """Shrink so the longest side is at most `max_size` (never enlarges), keeping the aspect ratio."""
    if not max_size or max(image.size) <= max_size:
        return image
    s = max_size / max(image.size)
    size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
    return image.resize(size, Image.BICUBIC)


def fit_image(image: Image.Image, max_size: int | None = DEFAULT_MAX_SIZE, box: Sequence[float] | None = None, *,
              path: Path | str = "image", min_side: int = MIN_SIDE) -> Image.Image:
    """Crop a loaded image to `box` at full resolution (if given), shrink it to `max_size`, and refuse a result
    whose shorter side is below `min_side` pixels (too little content for a usable descriptor)."""
    what = f"{image.width}x{image.height} image"
    if box is not None:
        try:
            image = crop_box(image, box)
        except ValueError as e:
            raise ImageLoadError(path, str(e).removeprefix("box: ")) from None
        what = f"box {','.join(f'{float(v):g}' for v in box)} ({image.width}x{image.height} pixels)"
    out = resize_longest(image, max_size)
    if min(out.size) < min_side:
        shrunk = f", {out.width}x{out.height} after shrinking to {max_size} pixels," if out.size != image.size else ""
        raise ImageLoadError(path, f"too small: the {what}{shrunk} has a side below {min_side} pixels, too little "
                                   "content for a usable descriptor")
    return out


def prepare(path: Path | str, max_size: int | None = DEFAULT_MAX_SIZE, box: Sequence[float] | None = None, *,
            max_pixels: int | None = None, min_side: int = MIN_SIDE) -> Image.Image:
    """Load, crop to `box` at full resolution (if given), then shrink to `max_size`: the input of every extractor."""
    return fit_image(load_image(path, max_pixels=max_pixels), max_size, box, path=path, min_side=min_side)


def list_images(folder: Path | str, *, problems: list[tuple[Path, str]] | None = None) -> list[Path]:
    """All image files below `folder` (recursively, by extension), sorted by relative path.

    Entries that cannot be used are reported, not silently skipped: symbolic-link loops, broken links, links to
    folders (not followed, so a link cycle cannot recurse forever) and folders that cannot be listed. Each is
    appended to `problems` as (path, reason) when a list is given, otherwise logged as a warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")

    def report(path: Path, reason: str) -> None:
        if problems is not None:
            problems.append((path, reason))
        else:
            log.warning("%s: %s; skipped", path, reason)

    found: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                listing = list(entries)
        except OSError as e:
            report(current, f"cannot list folder ({e.strerror})")
            continue
        for entry in listing:
            path = Path(entry.path)
            is_image = path.suffix.lower() in IMAGE_EXTENSIONS
            try:
                if entry.is_symlink():
                    try:
                        target = os.stat(path)
                    except OSError as e:
                        if e.errno == errno.ELOOP:
                            report(path, "symbolic link loop")
                        elif e.errno == errno.ENOENT:
                            report(path, "broken symbolic link (its target does not exist)")
                        else:
                            report(path, f"cannot follow symbolic link ({e.strerror})")
                        continue
                    if stat.S_ISDIR(target.st_mode):
                        report(path, "symbolic link to a folder, not followed")
                    elif stat.S_ISREG(target.st_mode) and is_image:
                        found.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif is_image and entry.is_file(follow_symlinks=False):
                    found.append(path)
            except OSError as e:
                report(path, f"cannot read directory entry ({e.strerror})")
    return sorted(found)


def content_hash(path: Path | str) -> str:
    """SHA-256 hex digest of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@IMAGE.register("image")
class ImageStage(ImageStageProtocol):
    """Load (EXIF-rotated RGB), crop to the query box at full resolution, shrink so the longest side <= max_size."""

    def __init__(self, *, max_size: Annotated[int, Range(ge=MIN_SIDE)] = DEFAULT_MAX_SIZE):
        self.max_size = max_size

    def __call__(self, path: Path | str, box: Sequence[float] | None = None) -> Image.Image:
        return prepare(path, self.max_size, box)

    def prepare_loaded(self, image: Image.Image, box: Sequence[float] | None = None, *,
                       path: Path | str = "image") -> Image.Image:
        """The same as calling it on `path`, for an image already loaded with `load_image` (decoded once)."""
        return fit_image(image, self.max_size, box, path=path)
