"""Whole extraction pipeline against the bare trunk forward, in the same run, per preset.

    python benchmarks/pipeline_vs_forward.py [--presets gem-lite0,rmac-lite0] [--images 24] [--rounds 3] [--threads 2]

pipeline: `Extractor.describe(path)` — JPEG decode, EXIF, resize to the preset's size, tensor conversion,
          one forward per scale, pooling, whitening;
bare:     the same forwards (`model(x)` per scale) on tensors decoded, resized and scaled beforehand.

Both run over the same images of mini-rparis6k, interleaved round by round so that machine noise hits both;
the figures are medians of the per-image times. ratio = bare median / pipeline median (1.0 = no overhead;
the goal is >= 0.85). The overhead is then broken down by timing each non-forward step on its own.
Whitening is fitted on 16 smvs-dvd-covers images (not timed).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from instar.extract.extractor import Extractor
from instar.extract.features.cnn import IMAGENET_MEAN, IMAGENET_STD, image_tensor
from instar.extract.images import list_images, load_image, resize_longest
from instar.presets import load_preset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def scaled_inputs(model, image, scales) -> list[torch.Tensor]:
    """The exact forward inputs `feature_maps` builds for `image` (see instar.features.cnn.feature_maps)."""
    x = image_tensor(image, getattr(model, "input_mean", IMAGENET_MEAN), getattr(model, "input_std", IMAGENET_STD))
    out = []
    for s in scales:
        out.append(x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="gem-lite0,rmac-lite0")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = list_images(args.data / "mini-rparis6k" / "jpg")[: args.images]
    train = list_images(args.data / "smvs-dvd-covers" / "jpg")[:16]
    print(f"{len(paths)} mini-rparis6k images, {args.rounds} rounds, {args.threads} torch threads")
    print(f"{'preset':14s} {'pipeline img/s':>14s} {'bare img/s':>10s} {'ratio':>6s}   overhead per image (median ms)")
    for name in args.presets.split(","):
        preset = load_preset(name)
        ex = Extractor(preset)
        if preset.needs_training:
            ex.fit(train)
        model, scales = ex.model, ex.features.scales
        inputs = [scaled_inputs(model, ex.load(p), scales) for p in paths]
        with torch.no_grad():
            for x in inputs[0]:
                model(x)
        ex.describe(paths[0])
        pipe, bare = [], []
        for _ in range(args.rounds):
            pipe += [timed(lambda p=p: ex.describe(p)) for p in paths]
            with torch.no_grad():
                bare += [timed(lambda xs=xs: [model(x) for x in xs]) for xs in inputs]
        # the non-forward steps, each on its own
        decode = [timed(lambda p=p: load_image(p)) for p in paths]
        images = [load_image(p) for p in paths]
        resize = [timed(lambda im=im: resize_longest(im, preset["image"]["max_size"])) for im in images]
        small = [ex.load(p) for p in paths]
        to_tensor = [timed(lambda im=im: scaled_inputs(model, im, scales)) for im in small]
        bound = [ex.views_and_regions(im) for im in small[:8]]
        pool = [timed(lambda vr=vr: ex._vector(*vr)) for vr in bound]
        mp, mb = statistics.median(pipe), statistics.median(bare)
        ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
        print(f"{name:14s} {1 / mp:14.2f} {1 / mb:10.2f} {mb / mp:6.2f}   "
              f"total {1000 * (mp - mb):.1f}: decode {ms(decode):.1f}, resize {ms(resize):.1f}, "
              f"to-tensor+scales {ms(to_tensor):.1f}, pooling+whitening {ms(pool):.1f}")


if __name__ == "__main__":
    main()
