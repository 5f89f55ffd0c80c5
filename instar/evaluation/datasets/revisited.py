"""Loaders of Revisited Oxford / Paris (revisitop) and of the classic Oxford5k / Paris6k ground truth."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ...extract.images import IMAGE_EXTENSIONS, list_images

from .checks import box_value, check_present, index_array, require_dir
from .types import Dataset, DatasetError, MissingImagesError, Query


def load_revisited(gnd_path: Path | str, images_dir: Path | str, name: str | None = None) -> Dataset:
    """Revisited Oxford / Paris in the revisitop layout.

    ``gnd_path``: the ``gnd_NAME.pkl`` pickle (``imlist`` database names, ``qimlist`` query
    names, ``gnd`` one dict per query with ``bbx`` [x0, y0, x1, y1], ``easy``, ``hard``,
    ``junk`` indices into ``imlist``). ``images_dir``: the folder holding ``NAME.jpg`` for
    every name in ``imlist`` and ``qimlist``. Queries are cropped to ``bbx``; they are not
    part of the database (``db_index`` None). `name` defaults to the pickle's name without
    the ``gnd_`` prefix.
    """
    gnd_path = Path(gnd_path)
    if not gnd_path.is_file():
        raise DatasetError(f"{gnd_path}: ground-truth file not found")
    try:
        with open(gnd_path, "rb") as f:
            cfg = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DatasetError(f"{gnd_path}: cannot read the ground-truth pickle ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("imlist", "qimlist", "gnd")):
        raise DatasetError(f"{gnd_path}: not a revisitop ground truth (need a dict with 'imlist', 'qimlist', 'gnd')")
    imlist, qimlist, gnd = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
    if len(gnd) != len(qimlist):
        raise DatasetError(f"{gnd_path}: {len(qimlist)} query names but {len(gnd)} 'gnd' entries")
    if name is None:
        stem = gnd_path.stem
        name = stem[4:] if stem.startswith("gnd_") else stem
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise MissingImagesError(
            f"{images_dir}: image folder not found; {gnd_path.name} needs {len(imlist)} database and "
            f"{len(qimlist)} query images NAME.jpg there (e.g. {images_dir / (str(imlist[0]) + '.jpg') if imlist else ''})"
        )
    files = [f"{n}.jpg" for n in imlist]
    qfiles = [f"{n}.jpg" for n in qimlist]
    check_present(images_dir, files + qfiles, "images")
    n = len(imlist)
    ground_truth, queries = [], []
    for i, (qn, g) in enumerate(zip(qimlist, gnd)):
        src = f"{gnd_path}: gnd[{i}] ({qn})"
        if not isinstance(g, dict):
            raise DatasetError(f"{src}: expected a dict with 'bbx', 'easy', 'hard', 'junk'")
        for key in ("easy", "hard", "junk"):
            if key not in g:
                raise DatasetError(f"{src}: no '{key}' list")
        ground_truth.append({k: index_array(g[k], n, f"{src} '{k}'") for k in ("easy", "hard", "junk")})
        queries.append(Query(name=str(qn), image=images_dir / qfiles[i], box=box_value(g.get("bbx"), src)))
    return Dataset(
        name=name,
        kind="revisited",
        root=gnd_path.parent,
        database=[images_dir / f for f in files],
        queries=queries,
        ground_truth=ground_truth,
    )


def _read_names(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [ln.strip() for ln in f if ln.strip()]


def load_classic(gt_dir: Path | str, images_dir: Path | str, name: str) -> Dataset:
    """Oxford5k / Paris6k with their original ground-truth files.

    ``gt_dir`` holds, per query ``Q`` (e.g. ``all_souls_1``): ``Q_query.txt`` with one line
    ``IMAGE x0 y0 x1 y1`` (Oxford writes ``oxc1_IMAGE``; the prefix is stripped),
    ``Q_good.txt``, ``Q_ok.txt``, ``Q_junk.txt`` (image names without extension, one a
    line). The database is every image below ``images_dir`` (searched recursively, since
    the Paris archives nest images in landmark folders), ordered by file stem; queries are
    database images (``db_index`` set) cropped to their box and stay in the database, as in
    the original protocol. Positives = good + ok, junk ignored; mAP and mP@k.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DatasetError(f"{gt_dir}: ground-truth folder not found (expected *_query.txt, *_good.txt, *_ok.txt, *_junk.txt)")
    qfiles = sorted(gt_dir.glob("*_query.txt"))
    if not qfiles:
        raise DatasetError(f"{gt_dir}: no *_query.txt ground-truth files in this folder")
    images_dir = require_dir(images_dir, "image folder")
    files = list_images(images_dir)
    if not files:
        raise MissingImagesError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) below this folder")
    by_stem: dict[str, Path] = {}
    for p in files:
        if p.stem in by_stem:
            raise DatasetError(f"{images_dir}: two images named {p.stem}: {by_stem[p.stem]} and {p}")
        by_stem[p.stem] = p
    stems = sorted(by_stem)
    index = {s: i for i, s in enumerate(stems)}

    entries = []
    for qf in qfiles:
        qname = qf.name[: -len("_query.txt")]
        lines = _read_names(qf)
        parts = lines[0].split() if lines else []
        if len(parts) != 5:
            raise DatasetError(f"{qf}: expected one line 'IMAGE x0 y0 x1 y1', got {lines[0] if lines else 'an empty file'!r}")
        img = parts[0]
        if img.startswith("oxc1_"):
            img = img[len("oxc1_"):]
        box = box_value(parts[1:], str(qf))
        lists = {}
        for kind in ("good", "ok", "junk"):
            f = gt_dir / f"{qname}_{kind}.txt"
            if not f.is_file():
                raise DatasetError(f"{f}: ground-truth file missing (every *_query.txt needs _good, _ok and _junk files)")
            lists[kind] = _read_names(f)
        entries.append((qname, img, box, lists))

    needed: list[str] = []
    for _, img, _, lists in entries:
        needed.append(img)
        for kind in ("good", "ok", "junk"):
            needed.extend(lists[kind])
    needed = list(dict.fromkeys(needed))
    missing = [s for s in needed if s not in index]
    if missing:
        raise MissingImagesError(
            f"{images_dir}: {len(missing)} of the {len(needed)} images the ground truth in {gt_dir} needs are missing; "
            f"first missing: {missing[0]}.jpg"
        )
    queries, ground_truth = [], []
    for qname, img, box, lists in entries:
        queries.append(Query(name=qname, image=by_stem[img], box=box, db_index=index[img]))
        ground_truth.append(
            {
                "ok": np.array([index[s] for s in lists["good"] + lists["ok"]], dtype=np.int64),
                "junk": np.array([index[s] for s in lists["junk"]], dtype=np.int64),
            }
        )
    return Dataset(
        name=name,
        kind="classic",
        root=gt_dir.parent,
        database=[by_stem[s] for s in stems],
        queries=queries,
        ground_truth=ground_truth,
    )
