"""Settings sweep behind the Lite global presets: which map, image size, scales and whitening each pooling wants.

    python benchmarks/preset_sweep.py [--arch efficientnet-lite0] [--sizes 512,724,1024] [--out sweep.json]

Every pooling (mac, spoc, sum, gem, crow, rmac) x map {stride32, head} x longest side {512, 724, 1024} x
scales {1; 1, 1/sqrt2, 1/2} x whitening {none; PCA-whitening, all dimensions or 256}, scored on

- mini-rparis6k (238 images, 12 cropped queries): Medium / Hard mAP, whitening learned on smvs-dvd-covers;
- smvs-dvd-covers (100 cover scans, 400 phone photos as queries): mAP, whitening learned on mini-rparis6k.

Each image is read and put through the trunk once per size and scale (one forward gives both maps); every
pooling is then applied to the same maps with instar's own pooling layers, so the sweep is the presets'
arithmetic without their repeated forwards. No query expansion. Figures are subset results.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from instar.extract import images as imgs
from instar.evaluation.datasets import load_dataset
from instar.extract.features.cnn import CNNFeatures, feature_maps
from instar.extract.pooling.functional import crow, gem, mac, region_mac, spoc, sum_pool
from instar.extract.regions import rmac_regions
from instar.extract.whitening import PCAWhitening
from instar.core.norms import l2n

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCALES = (1.0, 1 / math.sqrt(2), 0.5)
GLOBAL = {"mac": mac, "spoc": spoc, "sum": sum_pool, "gem": lambda x: gem(x, 3.0), "crow": crow}


def pooled_views(model, tap32: list, image) -> dict:
    """{tap: {pooling: (S, C) per-scale L2-normalised vectors, 'rmac': [per-scale (R, C) L2 region MACs]}}."""
    out = {}
    heads = feature_maps(model, image, SCALES)
    maps = {"head": heads, "stride32": [t[0].float() for t in tap32]}
    tap32.clear()
    for tap, per_scale in maps.items():
        d = {name: torch.stack([l2n(f(m)) for m in per_scale]).numpy() for name, f in GLOBAL.items()}
        d["rmac"] = [l2n(region_mac(m, rmac_regions(m.shape[1], m.shape[2], 3, 0.4))).numpy() for m in per_scale]
        out[tap] = d
    return out


def describe(feats: list[dict], pooling: str, multiscale: bool, whiten: PCAWhitening | None) -> np.ndarray:
    """Final (N, D) descriptors from the stored per-scale pooled vectors."""
    n_scales = len(SCALES) if multiscale else 1
    rows = []
    for f in feats:
        if pooling == "rmac":
            per_scale = []
            for r in f["rmac"][:n_scales]:
                if whiten is not None:
                    r = l2n(whiten.transform(r))
                per_scale.append(l2n(r.sum(axis=0)))
            v = l2n(np.sum(per_scale, axis=0))
        else:
            v = l2n(f[pooling][:n_scales].sum(axis=0))
            if whiten is not None:
                v = l2n(whiten.transform(v))
        rows.append(v)
    return np.stack(rows).astype(np.float32)


def fit_whitening(feats: list[dict], pooling: str, multiscale: bool, dim: int) -> PCAWhitening:
    if pooling == "rmac":
        n_scales = len(SCALES) if multiscale else 1
        x = np.concatenate([r for f in feats for r in f["rmac"][:n_scales]])
    else:
        x = describe(feats, pooling, multiscale, None)
    return PCAWhitening(dim or None).fit(x)


def score(ds, db: np.ndarray, q: np.ndarray) -> dict:
    ranks = np.argsort(-(q @ db.T), axis=1, kind="stable")
    m = ds.evaluate(ranks).metrics
    return {p: round(100 * m[p]["map"], 2) for p in ("medium", "hard") if p in m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="efficientnet-lite0")
    ap.add_argument("--sizes", default="512,724,1024")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=None, help="also write every row as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    paris = load_dataset("mini-rparis6k", data=args.data / "mini-rparis6k")
    smvs = load_dataset("smvs-dvd-covers", data=args.data / "smvs-dvd-covers")
    # everything to describe: each dataset's database, its queries (cropped), and its whole images as the other's training set
    items = {
        "paris.db": [(p, None) for p in paris.database],
        "paris.q": [(q.image, q.box) for q in paris.queries],
        "paris.train": [(p, None) for p in imgs.list_images(args.data / "mini-rparis6k" / "jpg")],
        "smvs.db": [(p, None) for p in smvs.database],
        "smvs.q": [(q.image, q.box) for q in smvs.queries],
    }
    items["smvs.train"] = items["smvs.db"] + [(q.image, None) for q in smvs.queries]
    features = CNNFeatures(arch=args.arch, weights="imagenet", layer="head")
    model = features.model
    tap32: list = []
    model._blocks[-1].register_forward_hook(lambda mod, inp, out: tap32.append(out))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        t0 = time.perf_counter()
        cache: dict = {}
        feats = {}
        for group, pairs in items.items():
            out = []
            for path, box in pairs:
                key = (str(path), box)
                if key not in cache:
                    cache[key] = pooled_views(model, tap32, imgs.prepare(path, size, box))
                out.append(cache[key])
            feats[group] = out
        print(f"size {size}: {len(cache)} images described in {time.perf_counter() - t0:.0f} s", flush=True)
        for tap, pooling, multiscale, wdim in itertools.product(("stride32", "head"), ("mac", "spoc", "sum", "gem", "crow", "rmac"),
                                                                (False, True), (None, 0, 256)):
            row = {"size": size, "layer": tap, "pooling": pooling, "multiscale": multiscale,
                   "whitening": "none" if wdim is None else f"pca{wdim or ''}"}
            for name, ds, train in (("paris", paris, "smvs.train"), ("smvs", smvs, "paris.train")):
                f = {g: [x[tap] for x in feats[g]] for g in (f"{name}.db", f"{name}.q", train)}
                w = None if wdim is None else fit_whitening(f[train], pooling, multiscale, wdim)
                res = score(ds, describe(f[f"{name}.db"], pooling, multiscale, w), describe(f[f"{name}.q"], pooling, multiscale, w))
                row.update({f"{name}.{k}": v for k, v in res.items()})
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print("\nbest per pooling (by paris Medium + smvs Medium):")
    for pooling in ("mac", "spoc", "sum", "gem", "crow", "rmac"):
        for wh in ("none", "pca"):
            cand = [r for r in rows if r["pooling"] == pooling and r["whitening"].startswith(wh)]
            best = max(cand, key=lambda r: r["paris.medium"] + r["smvs.medium"])
            print(json.dumps(best))


if __name__ == "__main__":
    main()
