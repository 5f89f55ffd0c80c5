"""Training sets for `instar train`: images with the object (or landmark) each shows.

- a folder with one sub-folder per object: `DIR/<object>/**/*.jpg` (images directly in DIR belong to no object
  and are reported);
- a CSV file with a header naming an image column (`image`, `path` or `file`; relative paths are relative to the
  CSV's folder) and an object column (`object_id`, `object`, `class`, `label` or `group`), e.g. smvs-dvd-covers'
  `groups.csv` or the groups `instar train --unlabelled` writes;
- an unlabelled folder (`--unlabelled`): every image under DIR, grouped later by `instar.learning.mining`.

`classes` globs (fnmatch on the object name) keep only some objects, e.g. `0[0-4]?` and `050` for covers 001-050.
"""
from __future__ import annotations

import csv
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..extract.images import list_images
from .rmac_net import LearningError

IMAGE_COLUMNS = ("image", "path", "file")
CLASS_COLUMNS = ("object_id", "object", "class", "label", "group")


@dataclass
class Labelled:
    """Image files and the object name of each (same order); `problems` lists what was left out and why."""
    paths: list[Path]
    labels: list[str]
    source: str
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def label_ids(self) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[c] for c in self.labels]

    def check_trainable(self) -> None:
        """Refuse a set with fewer than two objects, or no object seen twice (no positive pair)."""
        counts = {c: self.labels.count(c) for c in self.classes}
        if len(counts) < 2:
            only = f" (only {next(iter(counts))!r})" if counts else ""
            raise LearningError(f"{self.source}: training needs at least two objects (sub-folders or classes), "
                                f"found {len(counts)}{only}")
        if max(counts.values()) < 2:
            raise LearningError(f"{self.source}: no object has two images; training needs views of the same "
                                "object (two or more images per sub-folder)")


def _keep(name: str, classes: Sequence[str]) -> bool:
    return not classes or any(fnmatch.fnmatch(name, pattern) for pattern in classes)


def labelled_folder(root: Path | str, classes: Sequence[str] = ()) -> Labelled:
    """`root/<object>/...` -> the images of each object sub-folder (searched recursively)."""
    root = Path(root)
    if not root.is_dir():
        raise LearningError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    problems: list[tuple[Path, str]] = []
    paths, labels = [], []
    for p in list_images(root, problems=problems):
        parts = p.relative_to(root).parts
        if len(parts) < 2:
            problems.append((p, "directly in the folder, not in an object's sub-folder"))
            continue
        if _keep(parts[0], classes):
            paths.append(p)
            labels.append(parts[0])
    if not paths:
        what = f" of the objects {', '.join(classes)}" if classes else ""
        raise LearningError(f"{root}: no images{what} in sub-folders (one sub-folder of views per object is needed)")
    return Labelled(paths, labels, str(root), problems)


def labelled_csv(table: Path | str, classes: Sequence[str] = ()) -> Labelled:
    """A CSV of (image, object) rows; image paths relative to the CSV's folder unless absolute."""
    table = Path(table)
    if not table.is_file():
        raise LearningError(f"{table}: no such file")
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LearningError(f"{table}: cannot read it as CSV ({e})") from None
    header = list(rows[0]) if rows else []
    image_col = next((c for c in IMAGE_COLUMNS if c in header), None)
    class_col = next((c for c in CLASS_COLUMNS if c in header), None)
    if image_col is None or class_col is None:
        raise LearningError(f"{table}: needs a header with an image column ({' / '.join(IMAGE_COLUMNS)}) and an object "
                            f"column ({' / '.join(CLASS_COLUMNS)}); found {', '.join(header) or 'no rows'}")
    problems: list[tuple[Path, str]] = []
    paths, labels = [], []
    for i, row in enumerate(rows, start=2):
        name, label = (row.get(image_col) or "").strip(), (row.get(class_col) or "").strip()
        if not name or not label:
            raise LearningError(f"{table}: line {i}: empty {image_col if not name else class_col}")
        if not _keep(label, classes):
            continue
        path = Path(name) if Path(name).is_absolute() else table.parent / name
        if not path.is_file():
            problems.append((path, f"listed in {table} (line {i}) but not found"))
            continue
        paths.append(path)
        labels.append(label)
    if not paths:
        what = f" of the objects {', '.join(classes)}" if classes else ""
        raise LearningError(f"{table}: lists no existing image{what}")
    return Labelled(paths, labels, str(table), problems)


def read_labelled(path: Path | str, classes: Sequence[str] = ()) -> Labelled:
    """A labelled training set from a folder of object sub-folders or a CSV file."""
    path = Path(path)
    if path.suffix.lower() == ".csv" or path.is_file():
        return labelled_csv(path, classes)
    return labelled_folder(path, classes)


def unlabelled_folder(root: Path | str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every image under `root` (recursively), its sub-folders ignored, and the files that were left out."""
    root = Path(root)
    if not root.is_dir():
        raise LearningError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    problems: list[tuple[Path, str]] = []
    paths = list_images(root, problems=problems)
    if len(paths) < 4:
        raise LearningError(f"{root}: {len(paths)} image(s); mining groups needs at least two pairs of views")
    return paths, problems


def write_groups_csv(paths: Sequence[Path], labels: Sequence[str], target: Path | str) -> None:
    """Write (image, group) rows, paths relative to `target`'s folder when they lie under it (absolute otherwise)."""
    target = Path(target)
    base = target.absolute().parent
    with open(target, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "group"])
        for p, g in zip(paths, labels):
            rp = Path(p).absolute()
            try:
                name = rp.relative_to(base).as_posix()
            except ValueError:
                name = str(rp)
            w.writerow([name, g])
