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
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from instar.images import IMAGE_EXTENSIONS, list_images

from .metrics import DEFAULT_KAPPAS, compute_map, map_summary, ns_hits, revisited_protocols

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

Box = tuple[float, float, float, float]

KNOWN_DATASETS = ("roxford5k", "rparis6k", "oxford5k", "paris6k", "ukbench", "holidays", "folder",
                  "smvs-dvd-covers-test", "smvs-dvd-covers-ins", "smvs-dvd-covers-ins-test")

# smvs-dvd-covers: objects 001-050 are where instar's learned parts train (proposal network, triplet training),
# objects 051-100 are where they are measured (the "-test" variants)
SMVS_TEST_OBJECTS = tuple(f"{i:03d}" for i in range(51, 101))
SMVS_BOXES = "smvs-dvd-covers-boxes.json"  # package data: each phone photo's cover box, from instar's own matching


class DatasetError(ValueError):
    """A dataset that cannot be loaded or evaluated; the message names the file/folder and the problem."""


class MissingImagesError(DatasetError, FileNotFoundError):
    """Image files the ground truth needs are not there (message: the first missing one and how many)."""


# --------------------------------------------------------------------------------------------
# Common structure
# --------------------------------------------------------------------------------------------


@dataclass
class Query:
    """One query: the image file to load and, optionally, the box to crop it to before description."""

    name: str
    image: Path
    box: Box | None  # x0, y0, x1, y1 in original pixels
    db_index: int | None = None  # index of this query's own image in `Dataset.database`, if there


_METRIC_LABELS = {"map": "mAP", "ns": "N-S"}
_PROTOCOL_ORDER = ("easy", "medium", "hard", "all")


def _metric_order(key: str) -> tuple:
    if key == "map":
        return (0, 0)
    m = re.fullmatch(r"mp@(\d+)", key)
    if m:
        return (1, int(m.group(1)))
    return (2, key)


@dataclass
class Report:
    """Result of evaluating one dataset.

    ``metrics``: ``{protocol: {metric: float}}`` with protocol ``easy``/``medium``/``hard``
    (revisited) or ``all`` (every other kind); metric ``map``, ``mp@1``, ``mp@5``, ``mp@10``
    as fractions in [0, 1], and for UKBench ``ns`` (N-S score, in [0, 4]).
    ``per_query``: ``{protocol: {query_name: ap}}``; queries without a positive under a
    protocol (AP undefined, left out of the means) are absent. UKBench adds
    ``per_query['ns']``: ``{query_name: hits in the top 4}``.
    """

    dataset: str
    metrics: dict
    per_query: dict

    def table(self) -> str:
        """Plain-text table, one row per protocol; fractions as percentages with 2 decimals."""
        protos = sorted(self.metrics, key=lambda p: (_PROTOCOL_ORDER.index(p) if p in _PROTOCOL_ORDER else 99, p))
        keys: list[str] = []
        for p in protos:
            for k in self.metrics[p]:
                if k not in keys:
                    keys.append(k)
        keys.sort(key=_metric_order)
        headers = [_METRIC_LABELS.get(k, k.replace("mp@", "mP@")) for k in keys]
        first = max([len(self.dataset)] + [len(p) for p in protos])
        widths = [max(7, len(h)) for h in headers]
        lines = [self.dataset.ljust(first) + "".join("  " + h.rjust(w) for h, w in zip(headers, widths))]
        for p in protos:
            cells = []
            for k, w in zip(keys, widths):
                v = self.metrics[p].get(k)
                if v is None:
                    s = "-"
                elif isinstance(v, float) and math.isnan(v):
                    s = "nan"
                elif k == "ns":
                    s = f"{v:.2f}"
                else:
                    s = f"{100.0 * v:.2f}"
                cells.append("  " + s.rjust(w))
            lines.append(p.capitalize().ljust(first) + "".join(cells))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready copy (plain floats)."""
        return {"dataset": self.dataset, "metrics": self.metrics, "per_query": self.per_query}

    def __str__(self) -> str:
        return self.table()


@dataclass
class Dataset:
    """A benchmark: database image files (ground-truth order), queries and ground truth.

    ``ground_truth`` is one dict per query: revisited ``{'easy', 'hard', 'junk'}`` index
    arrays; other kinds ``{'ok', 'junk'}``. ``groups`` (UKBench, Holidays) is the (N,) group
    id of every database image.
    """

    name: str
    kind: str  # 'revisited' | 'classic' | 'ukbench' | 'holidays' | 'folder'
    root: Path
    database: list[Path] = field(repr=False)
    queries: list[Query] = field(repr=False)
    ground_truth: list[dict] = field(default_factory=list, repr=False)
    groups: np.ndarray | None = field(default=None, repr=False)
    kappas: tuple[int, ...] = DEFAULT_KAPPAS
    # where the query's object is in its positives, when the dataset knows it: per query {db index: box}
    positive_boxes: list[dict[int, Box]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ground_truth and len(self.ground_truth) != len(self.queries):
            raise DatasetError(f"{self.name}: {len(self.queries)} queries but {len(self.ground_truth)} ground-truth entries")

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, kind={self.kind!r}, root={str(self.root)!r}, database={len(self.database)} images, queries={len(self.queries)})"

    # -- evaluation -------------------------------------------------------------------------

    def check_ranks(self, ranks: np.ndarray) -> np.ndarray:
        """Validate a (Q, N') ranking: one row per query, distinct database indices in [0, N)."""
        r = np.asarray(ranks)
        q, n = len(self.queries), len(self.database)
        if r.ndim != 2 or r.shape[0] != q:
            raise DatasetError(f"{self.name}: ranks must have shape ({q} queries, up to {n} images), got {r.shape}")
        if r.size and not np.issubdtype(r.dtype, np.integer):
            raise DatasetError(f"{self.name}: ranks must hold integer database indices, got dtype {r.dtype}")
        if r.shape[1] > n:
            raise DatasetError(f"{self.name}: ranks rows have {r.shape[1]} entries but the database has {n} images")
        if r.size:
            lo, hi = int(r.min()), int(r.max())
            if lo < 0 or hi >= n:
                raise DatasetError(f"{self.name}: ranks hold index {lo if lo < 0 else hi}, outside 0..{n - 1}")
            s = np.sort(r, axis=1)
            dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
            if dup.size:
                raise DatasetError(f"{self.name}: the ranking of query {self.queries[dup[0]].name!r} lists an image twice")
        return r.astype(np.int64, copy=False)

    def evaluate(self, ranks: np.ndarray) -> Report:
        """Score rankings ``ranks`` (Q, N) int (database indices, best first, one row per query)."""
        r = self.check_ranks(ranks)
        names = [q.name for q in self.queries]
        if self.kind == "revisited":
            res = revisited_protocols(r, self.ground_truth, self.kappas)
            # a protocol under which no query has a positive (smvs-dvd-covers' Hard) is undefined: left out
            res = {p: d for p, d in res.items() if not np.all(np.isnan(d["aps"]))}
            metrics = {p: {k: v for k, v in d.items() if k not in ("aps", "prs")} for p, d in res.items()}
            per_query = {p: _per_query(names, d["aps"]) for p, d in res.items()}
            return Report(self.name, metrics, per_query)
        m, aps, mpr, _ = compute_map(r, self.ground_truth, self.kappas)
        metrics: dict[str, Any] = map_summary(m, mpr, self.kappas)
        per_query: dict[str, Any] = {"all": _per_query(names, aps)}
        if self.kind == "ukbench":
            qidx = np.array([q.db_index for q in self.queries], dtype=np.int64)
            hits = ns_hits(r, self.groups, qidx)
            metrics["ns"] = float(hits.mean()) if hits.size else float("nan")
            per_query["ns"] = {n: int(h) for n, h in zip(names, hits)}
        return Report(self.name, {"all": metrics}, per_query)


def _per_query(names: Sequence[str], aps: np.ndarray) -> dict[str, float]:
    return {n: float(a) for n, a in zip(names, aps) if not np.isnan(a)}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingImagesError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} is not a folder")
    return path


def _check_present(folder: Path, needed: Iterable[str], what: str) -> None:
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


def _idx(values: Any, n: int, source: str) -> np.ndarray:
    a = np.asarray(values if values is not None else [], dtype=np.int64).reshape(-1)
    if a.size and (a.min() < 0 or a.max() >= n):
        raise DatasetError(f"{source}: index {int(a.max() if a.max() >= n else a.min())} outside 0..{n - 1}")
    return a


def _box(values: Any, source: str) -> Box | None:
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


def _images_by_number(images_dir: Path, pattern: re.Pattern, expected: str, twice_hint: str = "") -> dict[int, Path]:
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


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


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
    _check_present(images_dir, files + qfiles, "images")
    n = len(imlist)
    ground_truth, queries = [], []
    for i, (qn, g) in enumerate(zip(qimlist, gnd)):
        src = f"{gnd_path}: gnd[{i}] ({qn})"
        if not isinstance(g, dict):
            raise DatasetError(f"{src}: expected a dict with 'bbx', 'easy', 'hard', 'junk'")
        for key in ("easy", "hard", "junk"):
            if key not in g:
                raise DatasetError(f"{src}: no '{key}' list")
        ground_truth.append({k: _idx(g[k], n, f"{src} '{k}'") for k in ("easy", "hard", "junk")})
        queries.append(Query(name=str(qn), image=images_dir / qfiles[i], box=_box(g.get("bbx"), src)))
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
    images_dir = _require_dir(images_dir, "image folder")
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
        box = _box(parts[1:], str(qf))
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


_UKBENCH_RE = re.compile(r"ukbench(\d{5})", re.IGNORECASE)


def load_ukbench(images_dir: Path | str, name: str = "ukbench") -> Dataset:
    """UKBench: ``ukbench00000.jpg`` ... ``ukbench10199.jpg`` (searched recursively).

    Group = number // 4. Every image is a query and stays in the database (``db_index``
    set), so it is normally its own first result. Metrics: the N-S score (images of the
    query's group among the top 4, max 4) and mAP with the group's images - the query
    included - as positives. Images whose name is not ``ukbenchNNNNN`` are an error.
    Incomplete groups are accepted (then the best N-S score is below 4).
    """
    images_dir = _require_dir(images_dir, "image folder")
    by_num = _images_by_number(images_dir, _UKBENCH_RE, "UKBench image name (expected ukbenchNNNNN.jpg with 5 digits)",
                               "; point to the folder of full-size images (e.g. full/)")
    if not by_num:
        raise MissingImagesError(f"{images_dir}: no UKBench images (ukbenchNNNNN.jpg) below this folder")
    nums = sorted(by_num)
    groups = np.array([k // 4 for k in nums], dtype=np.int64)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(int(g), []).append(i)
    queries = [Query(name=by_num[k].stem, image=by_num[k], box=None, db_index=i) for i, k in enumerate(nums)]
    ground_truth = [{"ok": np.array(members[int(g)], dtype=np.int64), "junk": np.empty(0, np.int64)} for g in groups]
    return Dataset(
        name=name,
        kind="ukbench",
        root=images_dir,
        database=[by_num[k] for k in nums],
        queries=queries,
        ground_truth=ground_truth,
        groups=groups,
    )


_HOLIDAYS_RE = re.compile(r"(\d{6})")


def load_holidays(images_dir: Path | str, name: str = "holidays") -> Dataset:
    """INRIA Holidays: ``100000.jpg``, ``100001.jpg``, ... (searched recursively).

    Group = number // 100; the group's query is its image with number % 100 == 0. Every
    image (queries included) is in the database; a query's own image is removed from its
    ranking before the AP is computed (treated as junk), as in the Holidays evaluation
    script. Positives = the other images of the group. Metric: mAP (and mP@k).
    """
    images_dir = _require_dir(images_dir, "image folder")
    by_num = _images_by_number(images_dir, _HOLIDAYS_RE, "Holidays image name (expected six digits, e.g. 100000.jpg)")
    if not by_num:
        raise MissingImagesError(f"{images_dir}: no Holidays images (NNNNNN.jpg) below this folder")
    nums = sorted(by_num)
    index = {k: i for i, k in enumerate(nums)}
    groups = np.array([k // 100 for k in nums], dtype=np.int64)
    group_ids = sorted(set(int(g) for g in groups))
    no_query = [g for g in group_ids if g * 100 not in index]
    if no_query:
        raise MissingImagesError(
            f"{images_dir}: {len(no_query)} of the {len(group_ids)} groups have no query image; "
            f"first missing: {no_query[0] * 100:06d}.jpg"
        )
    queries, ground_truth = [], []
    for g in group_ids:
        qi = index[g * 100]
        ok = [i for i, gg in enumerate(groups) if gg == g and i != qi]
        queries.append(Query(name=by_num[g * 100].stem, image=by_num[g * 100], box=None, db_index=qi))
        ground_truth.append({"ok": np.array(ok, dtype=np.int64), "junk": np.array([qi], dtype=np.int64)})
    return Dataset(
        name=name,
        kind="holidays",
        root=images_dir,
        database=[by_num[k] for k in nums],
        queries=queries,
        ground_truth=ground_truth,
        groups=groups,
    )


def load_folder(root: Path | str, name: str | None = None) -> Dataset:
    """A generic folder described by ``root/queries.json``::

        {"database": "images",
         "queries": [{"name": "astronaut", "image": "queries/astronaut.jpg", "box": [10, 20, 200, 240],
                      "positives": ["astronaut_1.jpg", "sub/x.jpg"], "junk": [],
                      "boxes": {"astronaut_1.jpg": [40, 10, 300, 280]}}]}

    ``database``: folder relative to `root`; every image below it (recursively) is the
    database, named by its path relative to that folder with forward slashes. Query
    ``image`` is relative to `root`; ``box`` (x0, y0, x1, y1 pixels) is optional/null;
    ``name`` defaults to the image's stem; ``positives`` and ``junk`` are database names.
    If the query image itself lies in the database it gets ``db_index`` and, unless listed
    as a positive, is ignored in its own ranking (treated as junk). ``boxes`` (optional) says
    where the query's object is in some positives (x0, y0, x1, y1 pixels of that image): the
    evaluator then measures localisation. Metric: mAP and mP@k under a single protocol ``all``.
    """
    root = _require_dir(root, "dataset folder")
    spec_path = root / "queries.json"
    if not spec_path.is_file():
        raise DatasetError(f"{spec_path}: not found (a folder dataset needs a queries.json)")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{spec_path}: cannot read it as JSON ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("queries"), list):
        raise DatasetError(f"{spec_path}: expected an object with a 'queries' list (and 'database': a folder)")
    db_rel = spec.get("database", "images")
    if not isinstance(db_rel, str) or not db_rel:
        raise DatasetError(f"{spec_path}: 'database' must be a folder path relative to {root}")
    db_dir = root / db_rel
    if not db_dir.is_dir():
        raise MissingImagesError(f"{db_dir}: database folder named in {spec_path} not found")
    files = list_images(db_dir)
    if not files:
        raise MissingImagesError(f"{db_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) below the database folder")
    names = [p.relative_to(db_dir).as_posix() for p in files]
    index = {n: i for i, n in enumerate(names)}
    resolved = {p.resolve(): i for i, p in enumerate(files)}
    queries, ground_truth, seen, known_boxes = [], [], set(), []
    for qi, q in enumerate(spec["queries"]):
        src = f"{spec_path}: queries[{qi}]"
        if not isinstance(q, dict) or not isinstance(q.get("image"), str):
            raise DatasetError(f"{src}: each query needs an 'image' path relative to {root}")
        img = root / q["image"]
        qname = str(q.get("name") or Path(q["image"]).stem)
        src = f"{spec_path}: query {qname!r}"
        if qname in seen:
            raise DatasetError(f"{src}: two queries have this name")
        seen.add(qname)
        if not img.is_file():
            raise MissingImagesError(f"{src}: query image {img} not found")
        box = _box(q.get("box"), src)
        lists = {}
        for key in ("positives", "junk"):
            vals = q.get(key) or []
            if not isinstance(vals, list):
                raise DatasetError(f"{src}: '{key}' must be a list of database image names")
            for v in vals:
                if v not in index:
                    raise DatasetError(f"{src}: {key} entry {v!r} is not an image of the database {db_dir}")
            lists[key] = [index[v] for v in vals]
        db_index = resolved.get(img.resolve())
        junk = list(lists["junk"])
        if db_index is not None and db_index not in lists["positives"] and db_index not in junk:
            junk.append(db_index)
        where = q.get("boxes") or {}
        if not isinstance(where, dict):
            raise DatasetError(f"{src}: 'boxes' must map positive names to [x0, y0, x1, y1]")
        for v in where:
            if v not in index or index[v] not in lists["positives"]:
                raise DatasetError(f"{src}: boxes entry {v!r} is not one of the query's positives")
        known_boxes.append({index[v]: _box(b, f"{src}: boxes[{v!r}]") for v, b in where.items()})
        queries.append(Query(name=qname, image=img, box=box, db_index=db_index))
        ground_truth.append({"ok": np.array(lists["positives"], dtype=np.int64), "junk": np.array(junk, dtype=np.int64)})
    if not queries:
        raise DatasetError(f"{spec_path}: the 'queries' list is empty")
    return Dataset(
        name=name or root.resolve().name,
        kind="folder",
        root=root,
        database=files,
        queries=queries,
        ground_truth=ground_truth,
        positive_boxes=known_boxes if any(known_boxes) else None,
    )


def load_smvs(root: Path | str, *, direction: str = "retrieval", objects: Sequence[str] | None = None,
              boxes: Path | str | None = None, name: str | None = None) -> Dataset:
    """Stanford MVS DVD covers from its ``groups.csv`` (image, object_id, device, width, height), either way round.

    ``direction='retrieval'``: each phone photo is a query, the cover scans (``Reference``) are the database,
    the one positive is its own cover. ``direction='instance'``: each cover scan is a query (the whole scan, no
    box), the phone photos are the database, its positives are the photos of that cover; ``boxes`` (default: the
    packaged ground truth instar's matching wrote) says where the cover is in each photo, for localisation.
    ``objects`` restricts both sides to those object ids (e.g. `SMVS_TEST_OBJECTS`). Protocol ``all``.
    """
    root = _require_dir(root, "smvs-dvd-covers folder")
    table = root / "groups.csv"
    if not table.is_file():
        raise DatasetError(f"{table}: not found (the smvs-dvd-covers layout has a groups.csv)")
    import csv
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "object_id", "device"} <= set(rows[0]):
        raise DatasetError(f"{table}: expected columns image, object_id, device")
    keep = set(objects) if objects is not None else None
    rows = [r for r in rows if keep is None or r["object_id"] in keep]
    refs = [r for r in rows if r["device"] == "Reference"]
    photos = [r for r in rows if r["device"] != "Reference"]
    if direction not in ("retrieval", "instance"):
        raise DatasetError(f"direction {direction!r}: expected 'retrieval' or 'instance'")
    db_rows, q_rows = (refs, photos) if direction == "retrieval" else (photos, refs)
    _check_present(root, [r["image"] for r in rows], "images")
    by_object: dict[str, list[int]] = {}
    for i, r in enumerate(db_rows):
        by_object.setdefault(r["object_id"], []).append(i)
    where: dict[str, Any] = {}
    if direction == "instance":
        from importlib import resources
        source = Path(boxes) if boxes is not None else resources.files("instar.data").joinpath(SMVS_BOXES)
        try:
            where = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"{source}: cannot read the cover boxes ({e})") from None
    queries, ground_truth, known = [], [], []
    for r in q_rows:
        positives = by_object.get(r["object_id"], [])
        queries.append(Query(name=r["image"].removeprefix("jpg/").rsplit(".", 1)[0], image=root / r["image"], box=None))
        ground_truth.append({"ok": np.array(positives, dtype=np.int64), "junk": np.zeros(0, dtype=np.int64)})
        boxes_here = {}
        for i in positives:
            entry = where.get(db_rows[i]["image"].removeprefix("jpg/"))
            if entry and entry.get("box"):
                boxes_here[i] = _box(entry["box"], f"cover box of {db_rows[i]['image']}")
        known.append(boxes_here)
    return Dataset(name=name or f"smvs-dvd-covers-{direction}", kind="folder", root=root,
                   database=[root / r["image"] for r in db_rows], queries=queries, ground_truth=ground_truth,
                   positive_boxes=known if any(known) else None)


# --------------------------------------------------------------------------------------------
# By name
# --------------------------------------------------------------------------------------------


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
