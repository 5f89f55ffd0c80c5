"""Plot validation mAP per epoch of `instar train` runs (their MODEL.history.json files) as a PNG, drawn with
Pillow (no plotting dependency):

    python benchmarks/learning_curve.py runs/w0.history.json:"whitening only" runs/b1.history.json:"last block" \
        --out docs/learning-map-per-epoch.png --title "smvs covers 051-100, 200 phone photos vs 50 scans"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def curve(path: Path, key: str) -> list[tuple[int, float]]:
    rows = json.loads(path.read_text())["history"]
    return [(r["epoch"], 100 * r[key]) for r in rows if r.get(key) is not None]


def plot(series: list[tuple[str, list[tuple[int, float]]]], out: Path, title: str, ylabel: str) -> None:
    W, H, L, R, T, B = 760, 430, 70, 20, 40, 60
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x0, x1 = 0, max(max(xs), 1)
    y0, y1 = (min(ys) // 5) * 5, (max(ys) // 5 + 1) * 5
    px = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)  # noqa: E731
    py = lambda y: H - B - (y - y0) / (y1 - y0) * (H - T - B)  # noqa: E731
    d.rectangle([L, T, W - R, H - B], outline="black")
    step = 1 if x1 <= 12 else max(1, x1 // 10)
    for x in range(x0, x1 + 1, step):
        d.line([px(x), H - B, px(x), H - B + 4], fill="black")
        d.text((px(x) - 4, H - B + 7), str(x), fill="black", font=font)
    y = y0
    while y <= y1 + 1e-9:
        d.line([L - 4, py(y), L, py(y)], fill="black")
        d.line([L + 1, py(y), W - R - 1, py(y)], fill="#e6e6e6")
        d.text((L - 30, py(y) - 6), f"{y:.0f}", fill="black", font=font)
        y += 5 if y1 - y0 <= 40 else 10
    d.text((W // 2 - 20, H - 25), "epoch", fill="black", font=font)
    d.text((8, T - 25), ylabel, fill="black", font=font)
    d.text((L, 8), title, fill="black", font=font)
    for i, (name, pts) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        d.line([(px(x), py(v)) for x, v in pts], fill=c, width=2)
        for x, v in pts:
            d.ellipse([px(x) - 3, py(v) - 3, px(x) + 3, py(v) + 3], fill=c)
        ly = T + 10 + 16 * i
        d.line([W - R - 230, ly + 6, W - R - 205, ly + 6], fill=c, width=3)
        d.text((W - R - 200, ly), name, fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="HISTORY.json:LABEL")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--key", default="val_map", help="val_map or train_map")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    series = []
    for spec in args.runs:
        path, _, label = spec.partition(":")
        series.append((label or Path(path).stem, curve(Path(path), args.key)))
    plot(series, args.out, args.title, "mAP (%)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
