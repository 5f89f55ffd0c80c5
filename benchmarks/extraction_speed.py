"""Extraction speed per preset on the demo collection: images/s (median per-image time), in one run.

    python benchmarks/extraction_speed.py [--presets a,b,...] [--repeat N] [--threads T]

CNN presets run with `random:0` weights (pretrained files cannot be downloaded here; the speed of a
forward pass does not depend on the weight values). Learned stages are fitted on 4 training images
first and not timed. Ratios are against the first preset listed, measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from instar.tools.demo import build_demo
from instar.extract.extractor import Extractor
from instar.extract.images import list_images
from instar.presets import builtin_names, load_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(["rootsift-vlad"] + [n for n in builtin_names() if n != "rootsift-vlad"]))
    ap.add_argument("--repeat", type=int, default=1, help="passes over the collection per preset")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--limit", type=int, default=20, help="database images timed per preset")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        coll = build_demo(Path(tmp) / "demo")
        db = list_images(coll / "images")[: args.limit]
        train = list_images(coll / "train")[:4]
        sizes = [max(Image.open(p).size) for p in db]
        print(f"demo collection: {len(db)} images timed, longest side median {statistics.median(sizes)} px, "
              f"{args.threads} torch threads")
        print(f"{'preset':16s} {'median s/img':>12s} {'images/s':>9s} {'ratio':>7s}")
        base = None
        for name in args.presets.split(","):
            preset = load_preset(name)
            if preset["features"]["type"] == "cnn":
                preset = preset.with_overrides({"features.weights": "random:0"})
            ex = Extractor(preset)
            if preset.needs_training:
                ex.fit(train)
            ex.describe(db[0])  # warm-up (model load, allocator)
            times = []
            for _ in range(args.repeat):
                for p in db:
                    t0 = time.perf_counter()
                    ex.describe(p)
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            base = base or med
            print(f"{name:16s} {med:12.4f} {1 / med:9.2f} {base / med:7.2f}x")


if __name__ == "__main__":
    main()
