"""Image stage: load any common format, apply EXIF orientation, convert to RGB, crop and resize."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .registry import IMAGE

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_SIZE = 1024

Box = tuple[float, float, float, float]


class ImageLoadError(ValueError):
    """An image file that cannot be read; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def load_image(path: Path | str) -> Image.Image:
    """Read `path` fully into an RGB PIL image with its EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "no such file")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image format Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(path, f"damaged or truncated image data ({e})") from None


def check_box(box: Sequence[float], width: int, height: int, *, source: str = "box") -> Box:
    """Validate an (x0, y0, x1, y1) pixel box against an image of `width` x `height`; clip it to the image."""
    if len(box) != 4:
        raise ValueError(f"{source}: a box needs 4 numbers x0,y0,x1,y1, got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{source}: box {x0:g},{y0:g},{x1:g},{y1:g} is empty (need x1 > x0 and y1 > y0)")
    cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
    if not (cx1 > cx0 and cy1 > cy0):
        raise ValueError(f"{source}: box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {width}x{height} image")
    return cx0, cy0, cx1, cy1


def crop_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """Crop `image` to the pixel box (x0, y0, x1, y1), rounded to whole pixels (revisitop's query crop)."""
    x0, y0, x1, y1 = check_box(box, image.width, image.height)
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


def prepare(path: Path | str, max_size: int | None = DEFAULT_MAX_SIZE, box: Sequence[float] | None = None) -> Image.Image:
    """Load, crop to `box` at full resolution (if given), then shrink to `max_size`: the input of every extractor."""
    image = load_image(path)
    if box is not None:
        image = crop_box(image, box)
    return resize_longest(image, max_size)


def to_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB array of a PIL image."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def list_images(folder: Path | str) -> list[Path]:
    """All image files below `folder` (recursively, by extension), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def content_hash(path: Path | str) -> str:
    """SHA-256 hex digest of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@IMAGE.register("image")
class ImageStage:
    """Load (EXIF-rotated RGB), crop to the query box at full resolution, shrink so the longest side <= max_size."""

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE):
        self.max_size = max_size

    def __call__(self, path: Path | str, box: Sequence[float] | None = None) -> Image.Image:
        return prepare(path, self.max_size, box)
