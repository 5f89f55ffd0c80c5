"""Sliding windows (DRH sec. 3.1.2) per image against the overlap lambda, on mini-rparis6k.

    python benchmarks/sliding_windows_count.py [--th 0.8] [--max-size 1024] [--data ../shared/data]

Every image is prepared as the extractor does (longest side 1024 px), its EfficientNet-Lite0 stride-32 map is
computed by the real trunk (once per distinct prepared size: the map's shape depends on nothing else), and
the `sliding` regions entry is run on it. Prints regions per image (mean, min, max) for lambda 0.4/0.5/0.6/0.7
beside the paper's (~21/36/40/60), for the chosen aspect threshold `th` and, to show the filter's effect, with
the filter off (th = 0.01).
mini-rparis6k is a real subset of Revisited Paris (250 images); label its figures as such.
"""
from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

from PIL import Image

from instar.extract.features.cnn import feature_maps
from instar.extract.features.efficientnet import load_efficientnet_lite
from instar.extract.images import list_images, prepare
from instar.extract.regions import MapGeometry
from instar.core.registry import REGIONS
from instar.core.registry import SECTIONS  # noqa: F401  (registers the entries)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAPER = {0.4: 21, 0.5: 36, 0.6: 40, 0.7: 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--th", type=float, default=0.8)
    ap.add_argument("--max-size", type=int, default=1024)
    args = ap.parse_args()

    paths = list_images(args.data / "mini-rparis6k" / "jpg")
    sizes = Counter(prepare(p, args.max_size).size for p in paths)
    model, _ = load_efficientnet_lite("efficientnet-lite0", "imagenet", "stride32")
    maps = {}
    for size in sizes:
        fmap = feature_maps(model, Image.new("RGB", size))[0]
        maps[size] = (fmap, MapGeometry.of(size, (fmap.shape[-1], fmap.shape[-2]), model.stride))
    shapes = Counter()
    for size, n in sizes.items():
        shapes[(size, tuple(maps[size][0].shape[-2:][::-1]))] += n
    print(f"mini-rparis6k (real subset of RParis6k): {len(paths)} images, longest side {args.max_size}; "
          f"Lite0 stride-32 maps (image WxH -> map wxh, images):")
    for (size, mshape), n in shapes.most_common(6):
        print(f"  {size[0]}x{size[1]} -> {mshape[0]}x{mshape[1]}  {n}")
    if len(shapes) > 6:
        print(f"  ... and {len(shapes) - 6} other sizes, {sum(n for _, n in shapes.most_common()[6:])} images")
    print()
    print(f"{'lambda':>6}  {'paper':>5}  " + "  ".join(f"{f'th={th:g}: mean (min-max)':>24}" for th in (args.th, 0.01)))
    for lam, paper in PAPER.items():
        cols = []
        for th in (args.th, 0.01):
            entry = REGIONS.build("sliding", overlap=lam, th=th)
            counts = []
            for size, n in sizes.items():
                fmap, geometry = maps[size]
                counts += [len(entry(fmap, geometry))] * n
            cols.append(f"{statistics.mean(counts):10.1f} ({min(counts)}-{max(counts)})")
        print(f"{lam:6.1f}  {paper:5d}  " + "  ".join(f"{c:>24}" for c in cols))


if __name__ == "__main__":
    main()
