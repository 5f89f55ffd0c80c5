"""A folder view of some smvs-dvd-covers objects, made of symbolic links (the data is never copied):
OUT/<object>/<device>.jpg, one sub-folder per cover (the layout `instar train` reads, and a `--train` folder for
`instar eval`), or with --flat OUT/<device>_<object>.jpg, an unlabelled folder for `instar train --unlabelled`
(the object is still in the file name, so mining's precision can be measured).

    python benchmarks/smvs_folder.py /tmp/covers001-050 --data ../shared/data/smvs-dvd-covers --objects 1-50
    python benchmarks/smvs_folder.py /tmp/covers001-050-flat --flat
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/smvs-dvd-covers")
    ap.add_argument("--objects", default="1-50", help="Range of object numbers, e.g. 1-50 (the training split).")
    ap.add_argument("--flat", action="store_true", help="One folder, the object only in the file names.")
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.objects.split("-"))
    keep = {f"{i:03d}" for i in range(lo, hi + 1)}
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: exists and is not empty")
    n = 0
    with open(args.data / "groups.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["object_id"] not in keep:
                continue
            src = (args.data / row["image"]).resolve()
            dst = (args.out / f"{row['device']}_{row['object_id']}.jpg" if args.flat
                   else args.out / row["object_id"] / f"{row['device']}.jpg")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
            n += 1
    print(f"{args.out}: {n} links to {len(keep)} objects")


if __name__ == "__main__":
    main()
