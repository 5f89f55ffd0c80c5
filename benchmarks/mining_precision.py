"""Precision of `instar train --unlabelled` mining, by the file names: the share of the verified pairs (graph
edges) whose two images truly show the same object, and how pure the mined groups (connected components) are;
with --max-partners, both for every verified pair (Gordo et al.'s plain graph) and for the edges kept.

The truth is read from each file name with a regular expression whose first group is the object (default: the
smvs folder view `benchmarks/smvs_folder.py --flat` writes, DEVICE_OBJECT.jpg):

    python benchmarks/mining_precision.py runs/mined.history.json [--pattern '_(\\d{3})\\.jpg$']
"""
from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("history", type=Path, help="MODEL.history.json of an --unlabelled run")
    ap.add_argument("--pattern", default=r"_(\d{3})\.jpg$")
    args = ap.parse_args()
    info = json.loads(args.history.read_text())
    mined = info.get("mined")
    if not mined:
        raise SystemExit(f"{args.history}: not the history of an --unlabelled run")
    rx = re.compile(args.pattern)

    def truth(path: str) -> str:
        m = rx.search(Path(path).name)
        if not m:
            raise SystemExit(f"{path}: its name does not match {args.pattern!r}")
        return m.group(1)

    paths = sorted({p for a, b, _ in mined.get("verified", mined["edges"]) for p in (a, b)})
    import csv
    groups_csv = Path(info["model"]).with_suffix(".groups.csv")
    with open(groups_csv, newline="") as f:
        kept = [r["image"] for r in csv.DictReader(f)]
    n_images = mined["images"]
    graphs = [("graph edges", mined["edges"])]
    if mined.get("max_partners"):
        graphs = [("verified pairs (plain: every verified pair is an edge)", mined["verified"]),
                  (f"edges without repeated structure (--max-partners {mined['max_partners']})", mined["edges"])]
    for title, edges in graphs:
        report(title, edges, n_images, truth, mined["pairs_tried"])
    print(f"(the run trained on the last graph's groups: {len(kept)} images in {groups_csv})")


def report(title: str, edges: list, n_images: int, truth, tried: int) -> None:
    names = sorted({p for a, b, _ in edges for p in (a, b)})
    index = {p: i for i, p in enumerate(names)}
    from instar.learning.mining import components
    groups = components(len(names), [(index[a], index[b], n) for a, b, n in edges])
    by_group = collections.defaultdict(list)
    for p, g in zip(names, groups.tolist()):
        by_group[g].append(truth(p))
    correct = sum(truth(a) == truth(b) for a, b, _ in edges)
    pure = sum(len(set(v)) == 1 for v in by_group.values())
    majority = sum(collections.Counter(v).most_common(1)[0][1] for v in by_group.values())
    objects = {truth(p) for p in names}
    split = sum(1 for o in objects if sum(o in v for v in by_group.values()) > 1)
    print(f"{title}: {len(edges)} of {tried} shortlisted pairs; same object: {correct} "
          f"({100 * correct / max(len(edges), 1):.1f}% precision)")
    print(f"  groups: {len(by_group)} holding {len(names)} of {n_images} images; pure groups: {pure}; images in their "
          f"group's majority object: {majority} ({100 * majority / max(len(names), 1):.1f}%); objects: {len(objects)}, "
          f"split over several groups: {split}")


if __name__ == "__main__":
    main()
