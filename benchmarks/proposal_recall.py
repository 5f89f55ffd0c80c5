"""Proposal recall against the number of proposals (Gordo et al., Deep Image Retrieval, Fig. 4 middle).

    python benchmarks/proposal_recall.py [--objects 051-100] [--rpn packaged:rpn-lite0-smvs001-050.pth]
                                         [--counts 1,5,10,20,50,100,300] [--limit N]

Over the phone photos of smvs-dvd-covers objects 051-100 (200 photos; the packaged RPN head was trained on
001-050 only), each photo is prepared as the extractor does (longest side 1024, never enlarged: these stay
640 px), its EfficientNet-Lite0 stride-32 ImageNet map computed, and four `regions` entries run on it: the
learned RPN (`rpn`, top 300), the R-MAC grid (`rmac`, levels 3), DRH's sliding windows (`sliding`, lambda 0.6)
and selective search (`selective-search`, top 300, fast, 256-px copy). The ground truth is the cover's box
estimated by matching (instar/data/smvs-dvd-covers-boxes.json). Recall at N = the share of photos whose box
has IoU >= t with one of the method's first N regions (in the method's own order; the whole image is every
method's first). Two tables per threshold: the regions' pixel boxes (what a hit reports), and the boxes as
RoI pooling sees them, snapped outward to whole cells of the stride-32 map.
smvs-dvd-covers is a real, complete SMVS category, but small: label figures from it as such.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from instar.extract.features.cnn import feature_maps
from instar.extract.features.efficientnet import load_efficientnet_lite
from instar.extract.images import load_image, resize_longest
from instar.tools.matching import read_boxes_json
from instar.extract.regions import MapGeometry
from instar.extract.regions.rpn import DEFAULT_WEIGHTS
from instar.core.boxes import iou_matrix as box_iou
from instar.core.registry import REGIONS
from instar.core.registry import SECTIONS  # noqa: F401  (registers the entries)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BOXES = Path(__file__).resolve().parents[1] / "instar" / "data" / "smvs-dvd-covers-boxes.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--boxes", type=Path, default=BOXES)
    ap.add_argument("--objects", default="051-100", help="object ids, FIRST-LAST")
    ap.add_argument("--rpn", default=DEFAULT_WEIGHTS, help="RPN weights (packaged:NAME or a .pth)")
    ap.add_argument("--counts", default="1,5,10,20,50,100,300")
    ap.add_argument("--max-size", type=int, default=1024)
    ap.add_argument("--layer", default="stride32", help="Lite0 tap the RPN was trained on (stride32, head)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N photos (quick runs)")
    args = ap.parse_args()

    first, last = (int(v) for v in args.objects.split("-"))
    counts = [int(c) for c in args.counts.split(",")]
    table = read_boxes_json(args.boxes)
    photos = sorted(name for name, box in table.items()
                    if not name.startswith("Reference/") and first <= int(Path(name).stem) <= last)
    missing = [n for n in photos if table[n] is None]
    photos = [n for n in photos if table[n] is not None]
    if args.limit:
        photos = photos[:args.limit]
    methods = {
        "rpn": REGIONS.build("rpn", weights=args.rpn, layer=args.layer, top=300),
        "rmac (levels 3)": REGIONS.build("rmac", levels=3),
        "sliding (0.6)": REGIONS.build("sliding", overlap=0.6),
        "selective search": REGIONS.build("selective-search", top=300),
    }
    model, _ = load_efficientnet_lite("efficientnet-lite0", "imagenet", args.layer)
    best = {(m, kind): [] for m in methods for kind in ("pixels", "cells")}  # per photo: (R,) running max IoU
    sizes = {m: [] for m in methods}
    seconds = {m: [] for m in methods}
    for name in photos:
        full = load_image(args.data / "smvs-dvd-covers" / "jpg" / name)
        image = resize_longest(full, args.max_size)
        s = image.width / full.width
        gt = torch.tensor([table[name]], dtype=torch.float32) * s
        fmap = feature_maps(model, image)[0]
        geometry = MapGeometry.of(image.size, (fmap.shape[-1], fmap.shape[-2]), model.stride)
        for m, entry in methods.items():
            t = time.perf_counter()
            regions = entry(fmap, geometry, image)
            seconds[m].append(time.perf_counter() - t)
            sizes[m].append(len(regions))
            for kind, boxes in (("pixels", regions.pixels), ("cells", geometry.cells_to_pixels(regions.cells))):
                iou = box_iou(torch.as_tensor(boxes, dtype=torch.float32), gt)[:, 0].numpy()
                best[(m, kind)].append(np.maximum.accumulate(iou))

    print(f"smvs-dvd-covers (real SMVS DVD category), phone photos of objects {args.objects}: {len(photos)} with a "
          f"matching-derived box" + (f" ({len(missing)} without one left out)" if missing else "")
          + f"; Lite0 {args.layer} ImageNet maps, longest side {args.max_size}; RPN weights {args.rpn}")
    print("regions per photo (mean) and time per photo (median, regions stage only): " + "; ".join(
        f"{m} {statistics.mean(sizes[m]):.0f}, {1000 * statistics.median(seconds[m]):.1f} ms" for m in methods))
    for kind, what in (("pixels", "pixel boxes"), ("cells", "boxes snapped to stride-32 cells (as pooled)")):
        for t in (0.5, 0.7):
            print(f"\nrecall at IoU {t} ({what}) against the number of proposals N")
            print(f"{'method':<18}" + "".join(f"{n:>7}" for n in counts))
            for m in methods:
                row = []
                for n in counts:
                    hits = [acc[min(n, len(acc)) - 1] >= t for acc in best[(m, kind)]]
                    row.append(f"{100 * np.mean(hits):6.1f}%")
                print(f"{m:<18}" + "".join(f"{v:>7}" for v in row))


if __name__ == "__main__":
    main()
