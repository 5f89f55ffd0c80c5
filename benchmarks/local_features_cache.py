"""Shared by the local-feature benchmarks (d2r_tables.py, asmk_reference.py): describe a benchmark's database and
queries ONCE with a preset's fitted extractor -- local features, plus the region proposals the tables sweep -- and
keep them in a cache folder, so that every kernel / aggregation / region count is evaluated on the same features.

The extractor is fitted exactly as `instar eval --train DIR` fits it (Extractor.fit: the preset's train.max_images
drawn with seed 0), so the cached features are the ones an index of that preset stores. Database images are
prepared as `Index.add` prepares them (loaded, shrunk to image.max_size); queries as `instar eval` describes them
(cropped to their box at full resolution, then shrunk).

Regions per database image (pixels of the described image): the selective-search boxes in OpenCV's order (the
`selective-search` regions entry's, `top` = MAX_SS), and the R-MAC grid of 1, 2 and 3 levels laid on the features'
region map (the `rmac` regions entry's).
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instar.extract import images as imgs
from instar.evaluation.datasets import load_dataset
from instar.extract.extractor import Extractor
from instar.presets import load_preset
from instar.extract.regions.grids import RMACGrid
from instar.extract.regions.selective_search import selective_search

MAX_SS = 50
RMAC_LEVELS = (1, 2, 3)


@dataclass
class Described:
    points: list[np.ndarray]        # per image (N, 4) [x, y, size, angle]
    descriptors: list[np.ndarray]   # per image (N, D) float32
    sizes: np.ndarray               # (n, 2) described (W, H)
    ss: list[np.ndarray] | None = None     # per database image (<= MAX_SS, 4) selective-search boxes
    rmac: dict | None = None               # levels -> per database image (R, 4) grid boxes
    rpn: list[np.ndarray] | None = None    # per database image: the whole image, then RPN proposals best first


def _progress(it, desc=""):
    items = list(it)
    t0 = time.perf_counter()
    for i, x in enumerate(items):
        if i and i % 25 == 0:
            print(f"  {desc}: {i}/{len(items)} ({(time.perf_counter() - t0) / i:.2f} s each)", file=sys.stderr, flush=True)
        yield x


def fitted_extractor(preset_name: str, train: Path, cache: Path, overrides: dict | None = None) -> Extractor:
    preset = load_preset(preset_name)
    if overrides:
        preset = preset.with_overrides(overrides)
    key = hashlib.sha1((preset.extraction_toml() + str(Path(train).resolve())).encode()).hexdigest()[:12]
    path = cache / f"model-{preset.name}-{key}.npz"
    ex = Extractor(preset)
    if path.is_file():
        with np.load(path) as z:
            ex.load_state({k: z[k] for k in z.files})
        return ex
    t0 = time.perf_counter()
    ex.fit(imgs.list_images(train), progress=_progress)
    print(f"fitted {preset.name} on {train} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **ex.state())
    return ex


def _save(path: Path, d: Described) -> None:
    arrays = {"sizes": d.sizes, "n": np.array([len(p) for p in d.points])}
    arrays["points"] = np.concatenate(d.points) if d.points else np.zeros((0, 4), np.float32)
    arrays["descriptors"] = np.concatenate(d.descriptors) if d.descriptors else np.zeros((0, 1), np.float32)
    if d.ss is not None:
        arrays["ss_n"] = np.array([len(b) for b in d.ss])
        arrays["ss"] = np.concatenate(d.ss)
        for level, boxes in d.rmac.items():
            arrays[f"rmac{level}_n"] = np.array([len(b) for b in boxes])
            arrays[f"rmac{level}"] = np.concatenate(boxes)
    np.savez(path, **arrays)


def _split(a: np.ndarray, n: np.ndarray) -> list[np.ndarray]:
    return np.split(a, np.cumsum(n)[:-1])


def _load(path: Path) -> Described:
    with np.load(path) as z:
        n = z["n"]
        d = Described(_split(z["points"], n), _split(z["descriptors"], n), z["sizes"])
        if "ss" in z.files:
            d.ss = _split(z["ss"], z["ss_n"])
            d.rmac = {lv: _split(z[f"rmac{lv}"], z[f"rmac{lv}_n"]) for lv in RMAC_LEVELS}
    return d


def rpn_boxes(dataset: str, data: Path, cache: Path, max_size: int, top: int = MAX_SS) -> list[np.ndarray]:
    """Learned proposals of every database image, best first (the whole image first): the `rpn` regions entry with
    its packaged head (EfficientNet-Lite0 stride-32 map, trained on smvs-dvd-covers covers 001-050), `top` kept,
    in the pixels of the image prepared at `max_size`."""
    path = cache / f"{dataset}-rpn{top}-{max_size}.npz"
    if path.is_file():
        with np.load(path) as z:
            return _split(z["boxes"], z["n"])
    from instar.extract.features.cnn import feature_maps
    from instar.extract.regions import MapGeometry
    from instar.extract.regions.rpn import RPNProposals
    ds = load_dataset(dataset, data=data)
    stage = RPNProposals(top=top)
    from instar.core.registry import TRUNKS
    model, _ = TRUNKS.entry(stage.arch).factory("imagenet", stage.layer, None)
    out = []
    t0 = time.perf_counter()
    for p in _progress(ds.database, desc=f"{dataset} RPN proposals"):
        image = imgs.fit_image(imgs.load_image(p), max_size, path=p)
        fmap = feature_maps(model, image, (1.0,))[0]
        geometry = MapGeometry.of(image.size, (fmap.shape[-1], fmap.shape[-2]), model.stride)
        out.append(stage(fmap, geometry, image).pixels.astype(np.float32))
    print(f"RPN proposals of {len(out)} database images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, boxes=np.concatenate(out), n=np.array([len(b) for b in out]))
    return out


def describe_dataset(ex: Extractor, dataset: str, data: Path, cache: Path, tag: str):
    """(dataset, database Described with regions, queries Described), from the cache when there."""
    ds = load_dataset(dataset, data=data)
    max_size = ex.preset["image"]["max_size"]
    db_path, q_path = cache / f"{dataset}-{tag}-db.npz", cache / f"{dataset}-{tag}-queries.npz"
    if db_path.is_file() and q_path.is_file():
        return ds, _load(db_path), _load(q_path)
    t0 = time.perf_counter()
    pts, descs, sizes, ss, rmac = [], [], [], [], {lv: [] for lv in RMAC_LEVELS}
    for path in _progress(ds.database, desc=f"{dataset} database"):
        image = imgs.fit_image(imgs.load_image(path), max_size, path=path)
        local = ex.features(image)
        pts.append(local.points.astype(np.float32))
        descs.append(local.descriptors.astype(np.float32))
        sizes.append(image.size)
        ss.append(selective_search(image, top=MAX_SS))
        fmap, stride = ex.features.region_map(image, local)
        bound = ex.regions_of(image, [fmap], stride)
        for lv in RMAC_LEVELS:
            ex.regions = RMACGrid(levels=lv)
            rmac[lv].append(bound(fmap).pixels.astype(np.float32))
    db = Described(pts, descs, np.array(sizes), ss, rmac)
    print(f"described {len(ds.database)} database images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    t0 = time.perf_counter()
    qp, qd, qs = [], [], []
    for q in _progress(ds.queries, desc=f"{dataset} queries"):
        image = ex.load(q.image, q.box)
        local = ex.features(image)
        qp.append(local.points.astype(np.float32))
        qd.append(local.descriptors.astype(np.float32))
        qs.append(image.size)
    queries = Described(qp, qd, np.array(qs))
    print(f"described {len(ds.queries)} queries in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    _save(db_path, db)
    _save(q_path, queries)
    return ds, db, queries
