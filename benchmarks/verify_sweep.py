"""Local verification sweep: the fused global ranking of each shared set (from fusion_sweep's cached vectors),
its top candidates verified with stored RootSIFT keypoints by the `local-sp` re-ranker's own code, for several
settings, without extracting anything twice.

    python benchmarks/verify_sweep.py --parts sscd:0.5,spoc-lite0:0.5 [--keypoints 150] [--tops 30] [--weights 1]

Keypoints (the strongest `--keypoints` per database image, `--query-keypoints` per query, both of the image
shrunk to 640 px as `local.max_size` does) are cached per set. Database positions are in original pixels and the
query's in the prepared query's, as in an index. Figures are subset results; nothing is learned.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from fusion_sweep import datasets, subset_rows, ukbench_dups, vectors
from instar import load_preset
from instar.extract.extractor import Extractor
from instar.extract.local_keypoints import SCALE, keypoints
from instar.search.rerank.local_sp import LocalVerification
from instar.search import Query


def local_cache(cache: Path, n_db: int, n_q: int, max_size: int) -> dict:
    path = cache / f"keypoints.{n_db}.{n_q}.{max_size}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=True)
        return z["data"].item()
    ex = Extractor(load_preset("sscd"))  # only its image stage (longest side 1024) is used
    out, t0 = {}, time.perf_counter()

    def db_side(p):
        q = Query(ex, p)
        pts, desc = keypoints(q.prepared, max_size, n_db)
        pts = pts * np.array([q.original.width / q.prepared.width, q.original.height / q.prepared.height], np.float32)
        return pts, np.rint(desc * SCALE).astype(np.float32)

    def q_side(p, box):
        pts, desc = keypoints(Query(ex, p, box).prepared, max_size, n_q)
        return pts, np.rint(desc * SCALE).astype(np.float32)

    for name, ds in datasets().items():
        if name == "smvs-dvd-covers-test":
            continue
        out[f"{name}/db"] = [db_side(d) for d in ds.database]
        out[f"{name}/q"] = [q_side(q.image, q.box) for q in ds.queries]
    base, queries, _ = ukbench_dups()
    out["ukbench-dups/db"] = [db_side(d) for d in base]
    out["ukbench-dups/q"] = [q_side(q, None) for q in queries]
    print(f"keypoints in {time.perf_counter() - t0:.0f} s", flush=True)
    np.savez(path, data=np.array(out, dtype=object))
    return out


def rerank(sim: np.ndarray, db_kp, q_kp, stage: LocalVerification | None) -> np.ndarray:
    """Rankings (Q, N): by `sim`, the top `stage.top` of each re-scored by the stage."""
    ranks = np.argsort(-sim, axis=1, kind="stable")
    if stage is None:
        return ranks
    out = []
    for qi, r in enumerate(ranks):
        head = r[:stage.top]
        inl = np.array([stage.verify_pair(*db_kp[j], *q_kp[qi])[0] for j in head])
        s = sim[qi, head] + stage.bonus(inl)
        out.append(np.concatenate([head[np.argsort(-s, kind="stable")], r[stage.top:]]))
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="sscd:0.5,spoc-lite0:0.5")
    ap.add_argument("--keypoints", type=int, default=150)
    ap.add_argument("--query-keypoints", type=int, default=1000)
    ap.add_argument("--max-size", type=int, default=640)
    ap.add_argument("--tops", default="30")
    ap.add_argument("--weights", default="1.0")
    ap.add_argument("--min-inliers", default="8")
    ap.add_argument("--saturate", default="30")
    ap.add_argument("--ratios", default="0.85")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/instar-fusion-cache"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    parts = [(p.split(":")[0], float(p.split(":")[1])) for p in args.parts.split(",")]
    vecs = [(vectors(n, args.cache), w) for n, w in parts]
    kp = local_cache(args.cache, args.keypoints, args.query_keypoints, args.max_size)
    sets = datasets()
    rows = subset_rows(sets["smvs-dvd-covers"], sets["smvs-dvd-covers-test"])
    sims = {}
    for name in list(sets) + ["ukbench-dups"]:
        src = "smvs-dvd-covers" if name == "smvs-dvd-covers-test" else name
        sim = sum(w * (v[f"{src}/q"] @ v[f"{src}/db"].T) for v, w in vecs) / sum(w for _, w in parts)
        db_kp, q_kp = kp[f"{src}/db"], kp[f"{src}/q"]
        if name == "smvs-dvd-covers-test":
            sim = sim[rows[1]][:, rows[0]]
            db_kp, q_kp = [db_kp[i] for i in rows[0]], [q_kp[i] for i in rows[1]]
        sims[name] = (sim, db_kp, q_kp)
    configs = [None] + [LocalVerification(top=int(t), weight=float(w), min_inliers=int(m), saturate=int(s),
                                          ratio=float(r))
                        for t, w, m, s, r in itertools.product(args.tops.split(","), args.weights.split(","),
                                                               args.min_inliers.split(","), args.saturate.split(","),
                                                               args.ratios.split(","))]
    results = []
    for stage in configs:
        t0 = time.perf_counter()
        row = {"parts": args.parts, "keypoints": args.keypoints,
               "rerank": None if stage is None else {"top": stage.top, "weight": stage.weight,
                                                     "min_inliers": stage.min_inliers, "saturate": stage.saturate,
                                                     "ratio": stage.ratio}}
        for name, (sim, db_kp, q_kp) in sims.items():
            ranks = rerank(sim, db_kp, q_kp, stage)
            if name == "ukbench-dups":
                _, _, positive = ukbench_dups()
                r = [int((rk == pos).nonzero()[0][0]) for rk, pos in zip(ranks, positive)]
                row[name] = {"map": 100 * float(np.mean([1 / (1 + x) for x in r]))}
                continue
            m = sets[name].evaluate(ranks).metrics
            row[name] = ({"medium": 100 * m["medium"]["map"], "hard": 100 * m["hard"]["map"]} if "hard" in m
                         else {"map": 100 * (m["medium"] if "medium" in m else m["all"])["map"]})
        results.append(row)
        cells = "  ".join(f"{k} " + "/".join(f"{x:.2f}" for x in v.values()) for k, v in row.items()
                          if isinstance(v, dict) and k != "rerank")
        print(row["rerank"], "|", cells, f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
