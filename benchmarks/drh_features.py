"""Region features for the DRH sweep, extracted once and cached outside the project.

    python benchmarks/drh_features.py [--size 724] [--cache /tmp/instar-drh-cache]

For every image the DRH sweep needs -- mini-rparis6k's database, its 12 cropped queries and all its photos (the
training set of the smvs-dvd-covers run), and smvs-dvd-covers' 100 scans and 400 phone photos (its own database
and queries, and the training set of the mini-rparis6k run) -- one EfficientNet-Lite0 (ImageNet) forward per
scale (1, 1/sqrt 2, 1/2) at longest side `--size` gives both maps (stride32 tap: 320 channels; head: 1280): the
scale-1 map of each is stored (regions are pooled on it, as instar's `region_pooling` does), with the per-scale
MACs the multi-scale global vector is summed from. `load(...)` reads an item back. Data are read from
../shared/data and never copied into the project.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch

from instar.extract import images as imgs
from instar.evaluation.datasets import load_dataset
from instar.extract.features.cnn import CNNFeatures, feature_maps
from instar.extract.pooling.functional import mac
from instar.core.norms import l2n

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCALES = (1.0, 1 / math.sqrt(2), 0.5)
TAPS = ("stride32", "head")
CACHE = Path("/tmp/instar-drh-cache")


def datasets(data: Path = DATA):
    return (load_dataset("mini-rparis6k", data=data / "mini-rparis6k"),
            load_dataset("smvs-dvd-covers", data=data / "smvs-dvd-covers"))


def items(data: Path = DATA) -> dict[str, list[tuple[Path, tuple | None]]]:
    """Every (path, box) the sweep describes, by group."""
    paris, smvs = datasets(data)
    return {
        "paris.db": [(Path(p), None) for p in paris.database],
        "paris.q": [(Path(q.image), q.box) for q in paris.queries],
        "paris.train": [(Path(p), None) for p in imgs.list_images(data / "mini-rparis6k" / "jpg")],
        "smvs.db": [(Path(p), None) for p in smvs.database],
        "smvs.q": [(Path(q.image), q.box) for q in smvs.queries],
        "smvs.train": [(Path(p), None) for p in imgs.list_images(data / "smvs-dvd-covers" / "jpg")],
    }


def key_of(path: Path, box) -> str:
    return hashlib.sha1(f"{Path(path).resolve()}|{box}".encode()).hexdigest()[:20]


def load(cache: Path, path: Path, box) -> dict:
    """{'size': (W, H), 'map.TAP': (C, h, w) float32 scale-1 map, 'mac.TAP': (S, C) per-scale L2 MACs}."""
    with np.load(cache / f"{key_of(path, box)}.npz") as z:
        return {k: z[k] for k in z.files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=724)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    cache = args.cache / str(args.size)
    cache.mkdir(parents=True, exist_ok=True)
    model = CNNFeatures(arch="efficientnet-lite0", weights="imagenet", layer="head").model
    tap32: list = []
    model._blocks[-1].register_forward_hook(lambda mod, inp, out: tap32.append(out[0].float()))
    todo = {key_of(p, b): (p, b) for group in items(args.data).values() for p, b in group}
    t0, done = time.perf_counter(), 0
    for key, (path, box) in todo.items():
        out = cache / f"{key}.npz"
        if out.exists():
            continue
        image = imgs.prepare(path, args.size, box)
        heads = feature_maps(model, image, SCALES)
        maps = {"head": heads, "stride32": list(tap32)}
        tap32.clear()
        arrays = {"size": np.array(image.size)}
        for tap, per_scale in maps.items():
            arrays[f"map.{tap}"] = per_scale[0].numpy()
            arrays[f"mac.{tap}"] = torch.stack([l2n(mac(m)) for m in per_scale]).numpy()
        np.savez(out, **arrays)
        done += 1
        if done % 50 == 0:
            print(f"{done} described, {(time.perf_counter() - t0) / done:.2f} s each", flush=True)
    print(f"{len(todo)} items cached in {cache} ({done} new, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
