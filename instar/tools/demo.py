"""A small, deterministic instance-search collection built from real photographs.

``build_demo(out)`` writes::

    out/images/*.jpg         the database: positives, distractors
    out/queries/<name>.jpg   one query photo per object
    out/train/*.jpg          a separate training set (codebooks, whitening) showing no query object
    out/queries.json         ground truth
    out/.instar-demo.json    marker + list of written files (lets a rebuild replace them safely)

Every picture comes from the photographs that ship inside scikit-image's wheel (no network).
Eight photos are *object sources*: the query is the photo itself with a ``box`` around a
distinctive object (the astronaut, the coffee cup, the cat's face, ...).  For each object the
database holds

* three *pastes*: the object crop, scaled 0.7-1.3x, rotated up to +-15 degrees, mildly
  perspective-warped (``cv2.warpPerspective``), colour-jittered and JPEG re-compressed, pasted
  into a background photo that is not an object source, covering ~35-65% of the result;
* one *recrop*: a different crop/zoom of the source photo around the object;
* (motorcycle only) the right view of the stereo pair, a genuine second viewpoint.

The distractors are background photos (crops, flips) and pastes of *non-query* regions of the
source photos (the shuttle next to the astronaut, the launch tower left of the rocket, ...).
The training set is made of crops of the non-source photos only.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same
``queries.json`` bytes and the same pixels.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

__all__ = ["build_demo", "DEMO_MARKER"]

DEMO_MARKER = ".instar-demo.json"
_GENERATOR = "instar.demo"
_FORMAT_VERSION = 1
_JPEG_QUALITY = 90
_SUBDIRS = ("images", "queries", "train")


# --------------------------------------------------------------------------------------------
# Photographs (all load from files inside the scikit-image wheel; none is downloaded)
# --------------------------------------------------------------------------------------------


def _skimage(name: str, index: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        img = getattr(data, name)()
        if index is not None:
            img = img[index]
        return img

    return load


def _to_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:  # RGBA (logo): composite onto white
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, :3])


@dataclass(frozen=True)
class _Object:
    name: str
    load: Callable[[], np.ndarray]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in source-photo pixels
    rest: tuple[int, int, int, int] | None  # a region outside `box` (non-query distractor)


# Boxes chosen by eye on a grid; each covers ~35-65% of its photo.
_OBJECTS: tuple[_Object, ...] = (
    _Object("astronaut", _skimage("astronaut"), (30, 0, 350, 430), (350, 0, 512, 330)),  # face, suit, patch
    _Object("coffee", _skimage("coffee"), (120, 0, 460, 340), None),  # cup, spoon, saucer
    _Object("chelsea", _skimage("chelsea"), (100, 10, 360, 290), None),  # the cat's face
    _Object("rocket", _skimage("rocket"), (150, 30, 480, 427), (0, 0, 150, 427)),  # rocket + two towers
    _Object("motorcycle", _skimage("stereo_motorcycle", 0), (70, 120, 700, 460), None),
    _Object("hubble", _skimage("hubble_deep_field"), (350, 250, 950, 800), (0, 0, 340, 420)),
    _Object("ihc", _skimage("immunohistochemistry"), (0, 0, 420, 300), (60, 300, 420, 512)),  # glands
    _Object("cameraman", _skimage("camera"), (60, 60, 440, 420), None),  # man + camera
)

# Extra genuine views of an object: (object name, file stem, loader).
_EXTRA_VIEWS = (("motorcycle", "motorcycle_view2", _skimage("stereo_motorcycle", 1)),)

# Photos that show none of the objects: backgrounds for pastes, distractors, training set.
_BACKGROUNDS: dict[str, Callable[[], np.ndarray]] = {
    "brick": _skimage("brick"),
    "gravel": _skimage("gravel"),
    "grass": _skimage("grass"),
    "coins": _skimage("coins"),
    "clock": _skimage("clock"),
    "moon": _skimage("moon"),
    "retina": _skimage("retina"),
    "colorwheel": _skimage("colorwheel"),
    "logo": _skimage("logo"),
    "cell": _skimage("cell"),
}
# Small photos only good as training material (too small to serve as a background).
_TRAIN_ONLY: dict[str, Callable[[], np.ndarray]] = {
    "page": _skimage("page"),
    "text": _skimage("text"),
}
# The training set draws crops from the textured / structured non-object photos.
_TRAIN_POOL = ("brick", "gravel", "grass", "coins", "text", "page", "retina", "moon", "logo", "clock")

_N_PASTES = 3
_N_BACKGROUND_DISTRACTORS = 10
_N_TRAIN = 18


class _Photos:
    """Loads each photo once per build, as RGB uint8."""

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    def get(self, key: str, load: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = _to_rgb(load())
        return self._cache[key]


# --------------------------------------------------------------------------------------------
# Image operations
# --------------------------------------------------------------------------------------------


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img.copy()
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_CUBIC
    return cv2.resize(img, (width, height), interpolation=interp)


def _fit(img: np.ndarray, max_size: int, upscale: bool = False) -> tuple[np.ndarray, float]:
    """Resize so that the longest side is `max_size` (never larger); returns (img, scale)."""
    h, w = img.shape[:2]
    s = max_size / max(h, w)
    if s >= 1.0 and not upscale:
        return img.copy(), 1.0
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    return _resize(img, nw, nh), s


def _colour_jitter(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Brightness, contrast, per-channel gain (white balance) and a little saturation change."""
    x = img.astype(np.float32)
    brightness = rng.uniform(-18, 18) * strength
    contrast = 1.0 + rng.uniform(-0.2, 0.2) * strength
    gains = 1.0 + rng.uniform(-0.08, 0.08, size=3).astype(np.float32) * strength
    saturation = 1.0 + rng.uniform(-0.25, 0.25) * strength
    mean = x.mean()
    is_grey = bool(np.all(img[:, :, 0] == img[:, :, 1]) and np.all(img[:, :, 1] == img[:, :, 2]))
    x = (x - mean) * contrast + mean + brightness
    if not is_grey:  # keep grey photos grey
        grey = x.mean(axis=2, keepdims=True)
        x = (grey + (x - grey) * saturation) * gains
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


def _random_crop(
    img: np.ndarray, rng: np.random.Generator, frac: tuple[float, float], aspect: tuple[float, float] | None = None
) -> np.ndarray:
    """A random crop whose sides are `frac` of the photo's (aspect ratio w/h drawn in `aspect`)."""
    h, w = img.shape[:2]
    f = rng.uniform(*frac)
    cw, ch = w * f, h * f
    if aspect is not None:
        a = rng.uniform(*aspect)
        area = cw * ch
        cw, ch = np.sqrt(area * a), np.sqrt(area / a)
        if cw > w:
            cw, ch = w, min(h, w / a)
        if ch > h:
            ch, cw = h, min(w, h * a)
    cw, ch = max(16, int(cw)), max(16, int(ch))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return img[y0 : y0 + ch, x0 : x0 + cw].copy()


def _paste(
    obj: np.ndarray,
    obj_scale: float,
    background: np.ndarray,
    rng: np.random.Generator,
    max_size: int,
    coverage: tuple[float, float] = (0.35, 0.65),
) -> tuple[np.ndarray, float]:
    """Paste `obj` into a crop of `background`; returns (image, fraction of it the object covers).

    `obj_scale` converts `obj` pixels to the query image's pixels, so that the drawn scale
    (0.7-1.3) is relative to the object's size in the query.
    """
    h, w = obj.shape[:2]
    # Geometry in "query-scale object" units: scale, rotation, perspective.
    s = rng.uniform(0.7, 1.3)
    theta = np.deg2rad(rng.uniform(-15, 15))
    ow, oh = w * obj_scale * s, h * obj_scale * s
    corners = np.array([[-ow / 2, -oh / 2], [ow / 2, -oh / 2], [ow / 2, oh / 2], [-ow / 2, oh / 2]])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    dst = corners @ rot.T
    dst += rng.uniform(-0.06, 0.06, size=(4, 2)) * np.array([ow, oh])  # mild perspective
    bw, bh = np.ptp(dst[:, 0]), np.ptp(dst[:, 1])

    # Result frame: aspect near the warped object's, area so that the object covers `coverage`.
    quad_area = 0.5 * abs(
        np.dot(dst[:, 0], np.roll(dst[:, 1], -1)) - np.dot(dst[:, 1], np.roll(dst[:, 0], -1))
    )
    target = rng.uniform(*coverage)
    aspect = np.clip(bw / bh * rng.uniform(0.8, 1.25), 0.6, 1.7)
    area = quad_area / target
    rw, rh = np.sqrt(area * aspect), np.sqrt(area / aspect)
    margin = 6
    rw, rh = max(rw, bw + 2 * margin), max(rh, bh + 2 * margin)
    # Respect max_size: shrink frame and object together.
    shrink = min(1.0, max_size / max(rw, rh))
    rw, rh = int(rw * shrink), int(rh * shrink)
    dst *= shrink

    bg = _random_crop(background, rng, (0.55, 1.0), aspect=(rw / rh * 0.95, rw / rh * 1.05))
    bg = _resize(bg, rw, rh)
    bg = _colour_jitter(bg, rng, 0.5)

    # Position the object at random inside the frame.
    lo = -dst.min(axis=0) + margin
    hi = np.array([rw, rh]) - dst.max(axis=0) - margin
    offset = np.array([rng.uniform(lo[0], max(lo[0], hi[0])), rng.uniform(lo[1], max(lo[1], hi[1]))])
    dst = dst + offset

    # Pre-resize the object close to its final size (area filter), then warp.
    pre = float(np.clip(np.sqrt(quad_area * shrink**2 / (w * h)), 0.05, 4.0))
    small = _resize(obj, max(8, round(w * pre)), max(8, round(h * pre)))
    sh, sw = small.shape[:2]
    src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], dtype=np.float32)
    H = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    small = _colour_jitter(small, rng, 1.0)
    warped = cv2.warpPerspective(small, H, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpPerspective(np.ones((sh, sw), np.float32), H, (rw, rh), flags=cv2.INTER_LINEAR)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.8)[:, :, None]
    out = warped.astype(np.float32) * mask + bg.astype(np.float32) * (1.0 - mask)
    out = np.clip(out + rng.normal(0, 1.5, size=out.shape) + 0.5, 0, 255).astype(np.uint8)
    out = _jpeg_roundtrip(out, int(rng.integers(65, 86)))
    box = (max(0.0, float(dst[:, 0].min())), max(0.0, float(dst[:, 1].min())),
           min(float(rw), float(dst[:, 0].max())), min(float(rh), float(dst[:, 1].max())))
    return out, box


def _recrop(
    photo: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator, max_size: int
) -> np.ndarray:
    """A different crop/zoom of `photo` around `box` (context differs from the full photo)."""
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    for _ in range(20):
        m = rng.uniform(-0.06, 0.3, size=4) * np.array([bw, bh, bw, bh])
        cx0, cy0 = max(0, int(x0 - m[0])), max(0, int(y0 - m[1]))
        cx1, cy1 = min(w, int(x1 + m[2])), min(h, int(y1 + m[3]))
        if (cx1 - cx0) * (cy1 - cy0) <= 0.85 * w * h:
            break
    else:  # the box is almost the whole photo: zoom into it instead
        cx0, cy0, cx1, cy1 = x0 + bw // 12, y0 + bh // 12, x1 - bw // 12, y1 - bh // 12
    crop = photo[cy0:cy1, cx0:cx1]
    crop, s = _fit(crop, max_size, upscale=True)
    ch, cw = crop.shape[:2]
    crop = _colour_jitter(crop, rng, 0.6)
    box = (max(0.0, (x0 - cx0) * s), max(0.0, (y0 - cy0) * s), min(float(cw), (x1 - cx0) * s), min(float(ch), (y1 - cy0) * s))
    return _jpeg_roundtrip(crop, int(rng.integers(70, 91))), box


# --------------------------------------------------------------------------------------------
# Output folder handling
# --------------------------------------------------------------------------------------------


def _read_marker(out: Path) -> dict | None:
    marker = out / DEMO_MARKER
    if not marker.is_file():
        return None
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != _GENERATOR or not isinstance(meta.get("files"), list):
        return None
    return meta


def _prepare_output(out: Path) -> None:
    """Create `out`, or clear a previous demo in it; refuse anything else that is not empty.

    Only files that the previous build listed in its marker are deleted.  Anything a user put
    into ``images/``, ``queries/`` or ``train/`` makes the build refuse (it would end up in the
    collection); other extra entries (e.g. an index folder built from the demo) are left alone.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"demo output {out} exists and is not a folder")
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not any(out.iterdir()):
        return
    meta = _read_marker(out)
    if meta is None:
        raise FileExistsError(
            f"refusing to build the demo in {out}: the folder is not empty and holds no previous "
            f"instar demo ({DEMO_MARKER} missing); choose an empty or new folder"
        )
    root = out.resolve()
    listed: list[Path] = []
    for rel in meta["files"]:
        p = (out / str(rel)).resolve()
        if root not in p.parents:  # never touch anything outside `out`
            raise FileExistsError(f"refusing to rebuild {out}: its {DEMO_MARKER} lists {rel!r}")
        listed.append(p)
    listed_set = set(listed)
    foreign = [
        p
        for sub in _SUBDIRS
        if (out / sub).is_dir()
        for p in sorted((out / sub).rglob("*"))
        if not p.is_dir() and p.resolve() not in listed_set
    ]
    if foreign:
        raise FileExistsError(
            f"refusing to rebuild the demo in {out}: {len(foreign)} file(s) not written by a previous "
            f"build are in its image folders, e.g. {foreign[0]}"
        )
    for p in listed:
        if p.is_file():
            p.unlink()
    for sub in _SUBDIRS:
        d = out / sub
        if d.is_dir():
            for p in sorted(d.rglob("*"), reverse=True):
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(img)).save(path, format="JPEG", quality=_JPEG_QUALITY)


# --- The build: the demo images the default preset (RootSIFT) finds nothing in, on purpose (CNN presets index them)
EXPECTED_SKIPS = {"distractor_colorwheel.jpg": "a smooth colour wheel has no corners for RootSIFT; expected"}


def query_positives(collection: Path, query_name: str) -> set[str]:
    """The names of a demo query's positives (its collection's queries.json)."""
    spec = json.loads((collection / "queries.json").read_text())
    return next(set(q["positives"]) for q in spec["queries"] if q["name"] == query_name)


def build_demo(out: Path, seed: int = 0, max_size: int = 512) -> Path:
    """Write the demo collection into `out` (see the module docstring) and return `out`.

    Refuses (``FileExistsError``) to write into a non-empty folder that is not a previous demo;
    a previous demo is rebuilt in place.  Same `seed` and `max_size` give identical files.
    """
    out = Path(out)
    max_size = int(max_size)
    if max_size < 64:
        raise ValueError(f"max_size must be at least 64, got {max_size}")
    _prepare_output(out)
    rng = np.random.default_rng(seed)
    photos = _Photos()
    written: list[str] = []

    def save(img: np.ndarray, rel: str) -> str:
        assert max(img.shape[:2]) <= max_size, (rel, img.shape)
        _save(img, out / rel)
        written.append(rel)
        return rel

    bg_names = list(_BACKGROUNDS)
    queries = []
    # Pastes cycle through the backgrounds in a shuffled order so they are all used evenly.
    bg_cycle = [bg_names[i] for i in rng.permutation(len(bg_names))]
    bg_pos = 0

    for obj in _OBJECTS:
        photo = photos.get(obj.name, obj.load)
        x0, y0, x1, y1 = obj.box
        query_img, q = _fit(photo, max_size)
        save(query_img, f"queries/{obj.name}.jpg")
        # Per-axis factors: the resized sides are rounded to whole pixels.
        qh, qw = query_img.shape[:2]
        sx, sy = qw / photo.shape[1], qh / photo.shape[0]
        box = [
            round(min(x0 * sx, qw), 1),
            round(min(y0 * sy, qh), 1),
            round(min(x1 * sx, qw), 1),
            round(min(y1 * sy, qh), 1),
        ]

        positives: list[str] = []
        boxes: dict[str, list[float]] = {}  # where the object is in each positive (the stereo view: unknown)
        crop = photo[y0:y1, x0:x1]
        used: set[str] = set()
        for _ in range(_N_PASTES):
            while bg_cycle[bg_pos % len(bg_cycle)] in used:
                bg_pos += 1
            bg = bg_cycle[bg_pos % len(bg_cycle)]
            bg_pos += 1
            used.add(bg)
            img, where = _paste(crop, q, photos.get(bg, _BACKGROUNDS[bg]), rng, max_size)
            positives.append(save(img, f"images/{obj.name}_paste_{bg}.jpg")[len("images/") :])
            boxes[positives[-1]] = [round(v, 1) for v in where]
        img, where = _recrop(photo, obj.box, rng, max_size)
        positives.append(save(img, f"images/{obj.name}_recrop.jpg")[len("images/") :])
        boxes[positives[-1]] = [round(v, 1) for v in where]
        for name, stem, load in _EXTRA_VIEWS:
            if name == obj.name:
                view = _colour_jitter(_fit(photos.get(stem, load), max_size)[0], rng, 0.4)
                positives.append(save(view, f"images/{stem}.jpg")[len("images/") :])
        queries.append(
            {"name": obj.name, "image": f"queries/{obj.name}.jpg", "box": box, "positives": positives, "junk": [],
             "boxes": boxes}
        )

    # Distractors 1: background photos, cropped / flipped.
    for i in rng.permutation(len(bg_names))[:_N_BACKGROUND_DISTRACTORS]:
        name = bg_names[int(i)]
        img = photos.get(name, _BACKGROUNDS[name])
        kind = int(rng.integers(0, 3))
        if kind >= 1:
            img = _random_crop(img, rng, (0.5, 0.9), aspect=(0.7, 1.45))
        if kind == 2 or rng.random() < 0.3:
            img = img[:, ::-1]
        img, _ = _fit(np.ascontiguousarray(img), max_size)
        img = _jpeg_roundtrip(_colour_jitter(img, rng, 0.5), int(rng.integers(75, 91)))
        save(img, f"images/distractor_{name}.jpg")

    # Distractors 2: non-query regions of the object photos, pasted like the objects are.
    for obj in _OBJECTS:
        if obj.rest is None:
            continue
        photo = photos.get(obj.name, obj.load)
        _, q = _fit(photo, max_size)
        rx0, ry0, rx1, ry1 = obj.rest
        bg = bg_names[int(rng.integers(0, len(bg_names)))]
        img, _ = _paste(photo[ry0:ry1, rx0:rx1], q, photos.get(bg, _BACKGROUNDS[bg]), rng, max_size)
        save(img, f"images/distractor_{obj.name}_rest_on_{bg}.jpg")

    # Training set: crops of photos that show no query object.
    train_sources = {**_BACKGROUNDS, **_TRAIN_ONLY}
    train_names = list(_TRAIN_POOL)
    order = [train_names[int(i)] for i in rng.permutation(len(train_names))]
    for k in range(_N_TRAIN):
        name = order[k % len(order)]
        img = photos.get(name, train_sources[name])
        img = _random_crop(img, rng, (0.45, 0.85), aspect=(0.6, 1.7))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.ascontiguousarray(np.rot90(img, int(rng.integers(0, 4))) if rng.random() < 0.3 else img)
        img, _ = _fit(img, max_size)
        img = _colour_jitter(img, rng, 0.5)
        save(img, f"train/train_{k:02d}_{name}.jpg")

    (out / "queries.json").write_text(
        json.dumps({"database": "images", "queries": queries}, indent=1) + "\n", encoding="utf-8"
    )
    written.append("queries.json")
    meta = {"generator": _GENERATOR, "version": _FORMAT_VERSION, "seed": int(seed), "max_size": max_size}
    meta["files"] = written
    (out / DEMO_MARKER).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out
