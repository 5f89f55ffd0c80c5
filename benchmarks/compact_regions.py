"""Compact regions: bytes per image and mAP of a region preset with float32 region descriptors and with them
product-quantised (`coding.method = "pq"` / `"opq"`, scored by ADC), through `instar eval`'s own protocol.

    OMP_NUM_THREADS=1 python benchmarks/compact_regions.py --dataset mini-rparis6k \\
        --data ../shared/data/mini-rparis6k --train ../shared/data/smvs-dvd-covers/jpg \\
        --preset ca-sr-sliding-lite0 --set coding.method=pq --set coding.m=128

Both indexes are built by `instar.evaluation.evaluate` (learned stages, the PQ codebook included, fitted on
--train, never on the evaluated images) in --workdir/float and --workdir/compact (reused when present). Bytes per
image: every file of the index directory (column files, SQLite, the stored model) over its images, and the column
files alone. The last line is key=value pairs.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from instar.evaluation.evaluate import evaluate


def directory_bytes(path: Path) -> tuple[int, int]:
    """(all files, column files only) of an index directory, in bytes."""
    files = [f for f in path.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    columns = sum(f.stat().st_size for f in files if f.suffix not in (".sqlite", ".npz", ".json")
                  and not f.name.startswith("index.sqlite"))
    return total, columns


def run(args, name: str, overrides: dict) -> dict:
    result = evaluate(args.dataset, args.preset, data=args.data, train=args.train,
                      workdir=Path(args.workdir) / name, overrides=overrides)
    print(result.table(), flush=True)
    index = Path(result.index_path)
    total, columns = directory_bytes(index)
    n = len(result.ranks[0]) if result.ranks is not None and len(result.ranks) else 1
    maps = {k: 100 * v["map"] for k, v in result.metrics.items() if isinstance(v, dict) and "map" in v}
    row = {"bytes_per_image": total / n, "column_bytes_per_image": columns / n, **{f"map_{k}": v for k, v in maps.items()}}
    print(f"{name}: {n} images, {total / n:,.0f} B/image on disk ({columns / n:,.0f} B in column files); "
          + ", ".join(f"{k} mAP {v:.2f}" for k, v in maps.items())
          + f"; seconds {', '.join(f'{k} {v:.1f}' for k, v in result.seconds.items())}; load {os.getloadavg()}",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--train", required=True, help="images disjoint from the evaluated set (learned stages)")
    ap.add_argument("--preset", default="ca-sr-sliding-lite0")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="the compact variant's overrides")
    ap.add_argument("--workdir", default="build/compact-regions")
    args = ap.parse_args()
    sets = args.sets or ["coding.method=pq"]
    overrides = {}
    for s in sets:
        key, _, value = s.partition("=")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    args.workdir = str(Path(args.workdir) / f"{args.dataset}.{args.preset}")
    rows = {"float": run(args, "float", {}), "compact": run(args, "compact", overrides)}
    pairs = [f"preset={args.preset}", f"dataset={args.dataset}", f"compact={','.join(sets)}"]
    for name, row in rows.items():
        pairs += [f"{name}_{k}={v:.2f}" if k.startswith("map") else f"{name}_{k}={v:.0f}" for k, v in row.items()]
    pairs.append(f"ratio={rows['float']['bytes_per_image'] / rows['compact']['bytes_per_image']:.2f}")
    pairs.append(f"load1={os.getloadavg()[0]:.2f}")
    print(" ".join(pairs))


if __name__ == "__main__":
    main()
