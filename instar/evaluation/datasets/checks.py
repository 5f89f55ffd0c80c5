"""Checks every loader shares: folders present, files present, index arrays and boxes well formed."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ...extract.images import list_images

from .types import Box, DatasetError, MissingImagesError


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingImagesError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} is not a folder")
    return path


def check_present(folder: Path, needed: Iterable[str], what: str) -> None:
    """Raise MissingImagesError naming the first of `needed` (paths relative to `folder`, possibly with
    sub-folders such as ``Reference/001.jpg``) that is absent. Each sub-folder is listed once."""
    listings: dict[str, set[str]] = {}
    needed = list(needed)
    missing = []
    for n in needed:
        parent, _, base = n.replace(os.sep, "/").rpartition("/")
        if parent not in listings:
            try:
                listings[parent] = set(os.listdir(folder / parent))
            except FileNotFoundError:
                listings[parent] = set()
            except OSError as e:
                raise MissingImagesError(f"{folder / parent}: cannot list the {what} folder ({e})") from None
        if base not in listings[parent]:
            missing.append(n)
    if missing:
        raise MissingImagesError(
            f"{folder}: {len(missing)} of the {len(needed)} {what} the ground truth needs are missing; "
            f"first missing: {folder / missing[0]}"
        )


def index_array(values: Any, n: int, source: str) -> np.ndarray:
    a = np.asarray(values if values is not None else [], dtype=np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise DatasetError(f"{source}: index {int(a.max() if a.max() >= n else a.min())} outside 0..{n - 1}")
    return a


def box_value(values: Any, source: str) -> Box | None:
    if values is None:
        return None
    try:
        b = [float(v) for v in values]
    except (TypeError, ValueError):
        raise DatasetError(f"{source}: box must be 4 numbers x0, y0, x1, y1, got {values!r}") from None
    if len(b) != 4 or not all(math.isfinite(v) for v in b):
        raise DatasetError(f"{source}: box must be 4 finite numbers x0, y0, x1, y1, got {values!r}")
    if not (b[2] > b[0] and b[3] > b[1]):
        raise DatasetError(f"{source}: box {b} is empty (need x1 > x0 and y1 > y0)")
    return (b[0], b[1], b[2], b[3])


def images_by_number(images_dir: Path, pattern: re.Pattern, expected: str, twice_hint: str = "") -> dict[int, Path]:
    """{number: file} for every image below `images_dir`, its stem fully matching `pattern` (group 1: the number)."""
    by_num: dict[int, Path] = {}
    for p in list_images(images_dir):
        m = pattern.fullmatch(p.stem)
        if not m:
            raise DatasetError(f"{p}: not a {expected}")
        k = int(m.group(1))
        if k in by_num:
            raise DatasetError(f"{images_dir}: image {k} found twice ({by_num[k]} and {p}){twice_hint}")
        by_num[k] = p
    return by_num
