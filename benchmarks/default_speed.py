"""Extraction speed of whole index descriptions (global vector and every stored column, e.g. the default's
keypoints), as `instar index` computes them: one process, median seconds per image over real photos.

    python benchmarks/default_speed.py --presets sscd-spoc-lite0-sp,sscd,spoc-lite0 --folder DIR --limit 20 --threads 2

Unlike extraction_speed.py (global vector only, demo images, random CNN weights) this times
`Extractor.describe_full(Extractor.load(path))`, with the presets' own weights.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from instar.extract.extractor import Extractor
from instar.extract.images import list_images
from instar.presets import load_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="sscd-spoc-lite0-sp")
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = list_images(args.folder)[:: max(1, len(list_images(args.folder)) // args.limit)][: args.limit]
    print(f"{len(paths)} images of {args.folder}, {args.threads} torch threads")
    for name in args.presets.split(","):
        ex = Extractor(load_preset(name))
        ex.describe_full(ex.load(paths[0]))  # warm-up: model loads
        times = []
        for p in paths:
            t0 = time.perf_counter()
            ex.describe_full(ex.load(p))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{name:20s} {med:8.3f} s/image  {1 / med:6.2f} images/s", flush=True)


if __name__ == "__main__":
    main()
