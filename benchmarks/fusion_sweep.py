"""Score-level fusion sweep: every preset's global vectors of each shared set computed once (cached), then every
weighting of two or three of them scored without extracting again.

    python benchmarks/fusion_sweep.py --presets sscd,sscd-distilled,spoc-lite0 [--weights 0,0.1,...,1] [--out F.json]

A fusion preset (`features.type = "fusion"`, `instar/fusion.py`) stores, per image, the parts' L2-normalised
vectors scaled by sqrt(w_i / sum w): the inner product of two fused vectors is sum_i w_i cos_i / sum w. This
script ranks by that same sum from the parts' cached vectors (each part described exactly as `instar eval`
describes it: database images whole, queries cropped to their box by the search's `Query`), so its figures are
those of `instar eval --preset FUSION` for the same weights (checked for the chosen rows in docs/default.md).

Sets (subset results): mini-rparis6k (Medium / Hard), smvs-dvd-covers (400 phone photos vs 100 scans),
smvs-dvd-covers-test (the same, covers 051-100), ukbench-dups (the 3 altered copies of ukbench00120 searched in
the 10 base images; mAP). Nothing here is learned: the parts must be weight-free presets.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np

from instar import load_preset
from instar.evaluation.datasets import load_dataset
from instar.extract.extractor import Extractor
from instar.search import Query

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")


def datasets() -> dict:
    return {
        "mini-rparis6k": load_dataset("mini-rparis6k", data=DATA / "mini-rparis6k"),
        "smvs-dvd-covers": load_dataset("smvs-dvd-covers", data=DATA / "smvs-dvd-covers"),
        "smvs-dvd-covers-test": load_dataset("smvs-dvd-covers-test", data=DATA / "smvs-dvd-covers"),
    }


def ukbench_dups() -> tuple[list[Path], list[Path], list[int]]:
    base = sorted((DATA / "ukbench-dups" / "base_images").glob("*.jpg"))
    queries = sorted((DATA / "ukbench-dups" / "mixed_images").glob("ukbench00120_*.jpg"))
    return base, queries, [[p.name for p in base].index("ukbench00120.jpg")] * len(queries)


def vectors(preset: str, cache: Path) -> dict[str, np.ndarray]:
    """{set/db, set/q: (N, D) float32} for one preset, computed once and kept in `cache`."""
    p = load_preset(preset)
    key = hashlib.sha1(p.extraction_toml().encode()).hexdigest()[:10]
    path = cache / f"{preset}.{key}.npz"
    if path.exists():
        return dict(np.load(path))
    ex = Extractor(p)
    out, t0, n = {}, time.perf_counter(), 0
    for name, ds in datasets().items():
        if name == "smvs-dvd-covers-test":  # the same images as smvs-dvd-covers: rows picked below
            continue
        out[f"{name}/db"] = np.stack([Query(ex, d).vector for d in ds.database])
        out[f"{name}/q"] = np.stack([Query(ex, q.image, q.box).vector for q in ds.queries])
        n += len(ds.database) + len(ds.queries)
    base, queries, _ = ukbench_dups()
    out["ukbench-dups/db"] = np.stack([Query(ex, d).vector for d in base])
    out["ukbench-dups/q"] = np.stack([Query(ex, q).vector for q in queries])
    print(f"{preset}: {n} images described in {time.perf_counter() - t0:.0f} s", flush=True)
    np.savez(path, **out)
    return out


def subset_rows(full, sub) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the full smvs set's database and queries that the -test subset holds."""
    db = {str(p): i for i, p in enumerate(full.database)}
    q = {str(x.image): i for i, x in enumerate(full.queries)}
    return (np.array([db[str(p)] for p in sub.database]), np.array([q[str(x.image)] for x in sub.queries]))


def score(parts: list[dict], weights, sets: dict, rows) -> dict:
    out = {}
    for name, ds in sets.items():
        src = "smvs-dvd-covers" if name == "smvs-dvd-covers-test" else name
        sim = 0.0
        for w, v in zip(weights, parts):
            db, q = v[f"{src}/db"], v[f"{src}/q"]
            if name == "smvs-dvd-covers-test":
                db, q = db[rows[0]], q[rows[1]]
            sim = sim + w * (q @ db.T)
        ranks = np.argsort(-sim, axis=1, kind="stable")
        m = ds.evaluate(ranks).metrics
        if "hard" in m:
            out[name] = {"medium": 100 * m["medium"]["map"], "hard": 100 * m["hard"]["map"]}
        else:  # smvs: only Medium-style (easy) positives; the -test subset is a folder set ('all')
            out[name] = {"map": 100 * (m["medium"] if "medium" in m else m["all"])["map"]}
    base, queries, positive = ukbench_dups()
    sim = sum(w * (v["ukbench-dups/q"] @ v["ukbench-dups/db"].T) for w, v in zip(weights, parts))
    rank_of_positive = [(np.argsort(-s, kind="stable") == pos).nonzero()[0][0] for s, pos in zip(sim, positive)]
    out["ukbench-dups"] = {"map": 100 * float(np.mean([1.0 / (1 + r) for r in rank_of_positive]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="sscd,sscd-distilled,spoc-lite0")
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
                    help="weights tried for each part (combinations summing to 1 with 2-3 parts)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/instar-fusion-cache"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    names = [p.strip() for p in args.presets.split(",") if p.strip()]
    vecs = {n: vectors(n, args.cache) for n in names}
    sets = datasets()
    rows = subset_rows(sets["smvs-dvd-covers"], sets["smvs-dvd-covers-test"])
    grid = [float(w) for w in args.weights.split(",")]
    results = []
    for combo in itertools.product(grid, repeat=len(names)):
        if abs(sum(combo) - 1) > 1e-6 or sum(w > 0 for w in combo) > 3:
            continue
        used = [(n, w) for n, w in zip(names, combo) if w > 0]
        r = score([vecs[n] for n, _ in used], [w for _, w in used], sets, rows)
        results.append({"weights": dict(used), **r})
        cells = "  ".join(f"{k} " + "/".join(f"{x:.2f}" for x in v.values()) for k, v in r.items())
        print(" + ".join(f"{w:g} {n}" for n, w in used), " | ", cells, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
