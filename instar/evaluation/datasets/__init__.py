"""Benchmark datasets in one common structure, and their evaluation protocols.

Every loader returns a :class:`Dataset`: the database image files in the order the ground
truth indexes them, the queries (image file, optional crop box), and the ground truth. The
evaluator describes the database and the queries, ranks the database for every query and
hands the ``(Q, N)`` rankings to :meth:`Dataset.evaluate`, which applies the dataset's own
protocol (survey "Deep Learning for Instance Retrieval", section 6) and returns a
:class:`Report`.

Supported layouts (see :func:`load_dataset` for how a name and folder are resolved):

* ``revisited`` - Revisited Oxford / Paris (Radenovic et al. 2018, revisitop): a
  ``gnd_NAME.pkl`` with ``imlist``, ``qimlist``, ``gnd`` (``bbx``, ``easy``, ``hard``,
  ``junk``) and the images ``NAME.jpg`` in one folder. Easy / Medium / Hard protocols.
* ``classic`` - Oxford5k / Paris6k original ground truth (``*_query.txt``, ``*_good.txt``,
  ``*_ok.txt``, ``*_junk.txt``); positives = good + ok, junk ignored.
* ``ukbench`` - UKBench (Nister & Stewenius 2006), ``ukbenchNNNNN.jpg``; groups of four;
  N-S score (and mAP).
* ``holidays`` - INRIA Holidays (Jegou et al. 2008), ``NNNNNN.jpg``; group = number // 100,
  query = the group's ``..00`` image, excluded from its own ranking; mAP.
* ``folder`` - any folder with a ``queries.json`` (format in :func:`load_folder`).

Modules: `types` (the structure), `checks`, `revisited` (revisited and classic Oxford / Paris), `others` (UKBench,
Holidays, folder, SMVS); this one resolves a name and folder to a loader (`load_dataset`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .others import load_folder, load_holidays, load_smvs, load_ukbench
from .revisited import load_classic, load_revisited
from .types import KNOWN_DATASETS, SMVS_TEST_OBJECTS, Dataset, DatasetError, MissingImagesError, Query, Report

__all__ = [
    "DatasetError",
    "MissingImagesError",
    "Query",
    "Dataset",
    "Report",
    "KNOWN_DATASETS",
    "load_revisited",
    "load_classic",
    "load_ukbench",
    "load_holidays",
    "load_folder",
    "load_smvs",
    "load_dataset",
]

def _first_dir(base: Path, candidates: Sequence[str], what: str, hint: str) -> Path:
    for c in candidates:
        p = base / c if c else base
        if p.is_dir():
            return p
    tried = ", ".join(str(base / c) if c else str(base) for c in candidates)
    raise MissingImagesError(f"{base}: no {what} found (tried {tried}); {hint}")


def _need_data(name: str, data: Path | None, what: str) -> Path:
    if data is None:
        raise DatasetError(f"{name}: give the dataset folder (data) or the {what}")
    data = Path(data)
    if not data.is_dir():
        raise DatasetError(f"{data}: dataset folder for {name} not found")
    return data


def load_dataset(
    name: str,
    data: Path | str | None = None,
    gnd: Path | str | None = None,
    images: Path | str | None = None,
) -> Dataset:
    """Load a benchmark by name.

    * ``roxford5k``, ``rparis6k`` - revisited: ground truth ``gnd`` or ``data/gnd_NAME.pkl``;
      images ``images`` or ``data/jpg``. Any other name with a ``gnd_<name>.pkl`` in `data`
      (e.g. ``mini-rparis6k``), or any unknown name given with `gnd`, is revisited too.
    * ``oxford5k``, ``paris6k`` - classic: ground-truth folder ``gnd`` or the first of
      ``data/gt_files``, ``data/gt``, ``data/gnd``, ``data/lab`` (or `data` itself if it holds
      ``*_query.txt``); images ``images`` or the first of ``data/jpg``, ``data/images``,
      ``data/paris``, ``data/oxbuild_images`` (searched recursively).
    * ``ukbench`` - images ``images`` or the first of ``data/jpg``, ``data/full``, ``data``.
    * ``holidays`` - images ``images`` or the first of ``data/jpg``, ``data/images``, ``data``.
    * ``folder`` - `data` (or `images`) is the folder holding ``queries.json``.
    """
    key = str(name).strip().lower()
    data_p = Path(data) if data is not None else None
    if key in ("roxford5k", "rparis6k") or (
        key not in KNOWN_DATASETS and (gnd is not None or (data_p is not None and (data_p / f"gnd_{key}.pkl").is_file()))
    ):
        if gnd is None:
            d = _need_data(key, data_p, "ground-truth file (gnd)")
            gnd_p = d / f"gnd_{key}.pkl"
            if not gnd_p.is_file():
                raise DatasetError(f"{gnd_p}: ground-truth file not found (download it with `instar download {key}` or pass gnd)")
        else:
            gnd_p = Path(gnd)
        if images is None:
            if data_p is None:
                raise DatasetError(f"{key}: give the image folder (images) or a data folder holding jpg/")
            img_p = data_p / "jpg"
        else:
            img_p = Path(images)
        return load_revisited(gnd_p, img_p, name=key)
    if key in ("oxford5k", "paris6k"):
        if gnd is not None:
            gt_p = Path(gnd)
        else:
            d = _need_data(key, data_p, "ground-truth folder (gnd)")
            if any(d.glob("*_query.txt")):
                gt_p = d
            else:
                gt_p = _first_dir(d, ("gt_files", "gt", "gnd", "lab"), "ground-truth folder", "pass gnd=<folder of *_query.txt>")
        if images is not None:
            img_p = Path(images)
        else:
            d = _need_data(key, data_p, "image folder (images)")
            img_p = _first_dir(d, ("jpg", "images", "paris", "oxbuild_images"), "image folder", "pass images=<folder>")
        return load_classic(gt_p, img_p, name=key)
    if key in ("smvs-dvd-covers-test", "smvs-dvd-covers-ins", "smvs-dvd-covers-ins-test"):
        d = _need_data(key, data_p, "smvs-dvd-covers folder")
        return load_smvs(d, direction="instance" if "-ins" in key else "retrieval",
                         objects=SMVS_TEST_OBJECTS if key.endswith("-test") else None, name=key)
    if key == "ukbench":
        if images is not None:
            return load_ukbench(images, name=key)
        d = _need_data(key, data_p, "image folder (images)")
        return load_ukbench(_first_dir(d, ("jpg", "full", ""), "image folder", "pass images=<folder>"), name=key)
    if key == "holidays":
        if images is not None:
            return load_holidays(images, name=key)
        d = _need_data(key, data_p, "image folder (images)")
        return load_holidays(_first_dir(d, ("jpg", "images", ""), "image folder", "pass images=<folder>"), name=key)
    if key == "folder":
        root = data_p if data_p is not None else (Path(images) if images is not None else None)
        if root is None:
            raise DatasetError("folder: give the folder holding queries.json (data)")
        return load_folder(root)
    hint = f" (no {data_p / f'gnd_{key}.pkl'} either)" if data_p is not None else ""
    raise DatasetError(
        f"unknown dataset {name!r}{hint}; known: {', '.join(KNOWN_DATASETS)}, "
        f"or any NAME with a gnd_NAME.pkl in the data folder (revisitop layout)"
    )
