"""Local verification sweep: the fused global ranking of each shared set (from fusion_sweep's cached vectors),
its top candidates verified with stored RootSIFT keypoints by the `local-sp` re-ranker's own code, for several
settings, without extracting anything twice.

    python benchmarks/verify_sweep.py --parts sscd:0.5,spoc-lite0:0.5 [--keypoints 150] [--tops 30] [--weights 1]
        [--encodings u8,p64q4] [--sets smvs-dvd-covers-train]

Keypoints (the strongest `--keypoints` per database image, `--query-keypoints` per query, both of the image
shrunk to 640 px as `local.max_size` does) are cached per set. Database positions are in original pixels and the
query's in the prepared query's, as in an index; descriptors are cached as float RootSIFT and stored / matched in
each `--encodings` value as an index and the re-ranker do. `smvs-dvd-covers-train` (covers 001-050: phone photos
against those 50 scans) is where settings are chosen; the other sets only report. Figures are subset results;
nothing is learned.
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
from instar.evaluation.datasets.others import load_smvs
from instar.extract.local_keypoints import keypoints, stored_levels
from instar.search.rerank.local_sp import LocalVerification
from instar.core.registry import EXPANSIONS
from instar.search import Query
from instar.search.types import Database, Ranking


def local_cache(cache: Path, n_db: int, n_q: int, max_size: int) -> dict:
    path = cache / f"keypoints-f32.{n_db}.{n_q}.{max_size}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=True)
        return z["data"].item()
    ex = Extractor(load_preset("sscd"))  # only its image stage (longest side 1024) is used
    out, t0 = {}, time.perf_counter()

    def db_side(p):
        q = Query(ex, p)
        pts, desc = keypoints(q.prepared, max_size, n_db)
        pts = pts * np.array([q.original.width / q.prepared.width, q.original.height / q.prepared.height], np.float32)
        return pts, desc

    def q_side(p, box):
        return keypoints(Query(ex, p, box).prepared, max_size, n_q)

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


def with_train_split(sets: dict) -> dict:
    """`sets` plus `smvs-dvd-covers-train`: covers 001-050's phone photos against those 50 scans (the tuning split)."""
    sets["smvs-dvd-covers-train"] = load_smvs(sets["smvs-dvd-covers"].root, objects=[f"{i:03d}" for i in range(1, 51)],
                                              name="smvs-dvd-covers-train")
    return sets


def encoded(kp: list, encoding: str) -> list:
    """(positions, descriptors) pairs with the descriptors stored and decoded as `encoding` does."""
    return [(xy, stored_levels(d, encoding)) for xy, d in kp]


def rerank(sim: np.ndarray, db_kp, q_kp, stage: LocalVerification | None, expansion=None, fused=None) -> np.ndarray:
    """Rankings (Q, N): by `sim`, the top `stage.top` of each re-scored by the stage (batched matching, as the
    re-ranker does), then `expansion` (an EXPANSIONS entry) over the fused global vectors `fused` = (db, q)."""
    ranks = np.argsort(-sim, axis=1, kind="stable")
    if stage is None and expansion is None:
        return ranks
    out = []
    for qi, r in enumerate(ranks):
        scores = sim[qi, r].astype(np.float32)
        if stage is not None:
            head = r[:stage.top]
            inl, _ = stage.verify_many([db_kp[j] for j in head], *q_kp[qi])
            s = sim[qi, head] + stage.bonus(inl)
            order = np.argsort(-s, kind="stable")
            r = np.concatenate([head[order], r[stage.top:]])
            scores = np.concatenate([s[order], scores[stage.top:]]).astype(np.float32)
        if expansion is not None:
            ranking = expansion(Database(np.arange(len(fused[0])), fused[0]), Query(vector=fused[1][qi]),
                                Ranking(r.astype(np.int64), scores), len(r))
            r = ranking.positions
        out.append(r)
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
    ap.add_argument("--encodings", default="u8")
    ap.add_argument("--expansions", default="none", help="comma-separated expansion.method values applied after the "
                    "re-ranker with their defaults (e.g. none,alpha-qe,diffusion,alpha-dba)")
    ap.add_argument("--sets", default="", help="comma-separated subset of: mini-rparis6k, smvs-dvd-covers, "
                    "smvs-dvd-covers-test, smvs-dvd-covers-train, ukbench-dups (default: all)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/instar-fusion-cache"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    parts = [(p.split(":")[0], float(p.split(":")[1])) for p in args.parts.split(",")]
    vecs = [(vectors(n, args.cache), w) for n, w in parts]
    kp = local_cache(args.cache, args.keypoints, args.query_keypoints, args.max_size)
    sets = with_train_split(datasets())
    wanted = set(filter(None, args.sets.split(","))) or set(sets) | {"ukbench-dups"}
    subsets = {name: subset_rows(sets["smvs-dvd-covers"], sets[name])
               for name in ("smvs-dvd-covers-test", "smvs-dvd-covers-train")}
    sims = {}
    for name in [n for n in list(sets) + ["ukbench-dups"] if n in wanted]:
        src = "smvs-dvd-covers" if name in subsets else name
        total = sum(w for _, w in parts)
        # the fused vector: parts scaled by sqrt(w / total), so its inner product is the weighted cosine `sim`
        fused = [np.hstack([np.sqrt(w / total) * v[f"{src}/{side}"] for v, w in vecs]).astype(np.float32)
                 for side in ("db", "q")]
        sim = fused[1] @ fused[0].T
        db_kp, q_kp = kp[f"{src}/db"], kp[f"{src}/q"]
        if name in subsets:
            rows = subsets[name]
            sim = sim[rows[1]][:, rows[0]]
            fused = [fused[0][rows[0]], fused[1][rows[1]]]
            db_kp, q_kp = [db_kp[i] for i in rows[0]], [q_kp[i] for i in rows[1]]
        sims[name] = (sim, db_kp, q_kp, fused)
    configs = [(None, None)] + [
        (e, LocalVerification(top=int(t), weight=float(w), min_inliers=int(m), saturate=int(s), ratio=float(r)))
        for e, t, w, m, s, r in itertools.product(args.encodings.split(","), args.tops.split(","),
                                                  args.weights.split(","), args.min_inliers.split(","),
                                                  args.saturate.split(","), args.ratios.split(","))]
    expansions = [None if e == "none" else EXPANSIONS.build(e) for e in args.expansions.split(",")]
    results = []
    for (encoding, stage), expansion in itertools.product(configs, expansions):
        t0 = time.perf_counter()
        row = {"parts": args.parts, "keypoints": args.keypoints, "encoding": encoding,
               "expansion": None if expansion is None else type(expansion).__name__,
               "rerank": None if stage is None else {"top": stage.top, "weight": stage.weight,
                                                     "min_inliers": stage.min_inliers, "saturate": stage.saturate,
                                                     "ratio": stage.ratio}}
        for name, (sim, db_kp, q_kp, fused) in sims.items():
            if encoding is not None:
                db_kp, q_kp = encoded(db_kp, encoding), encoded(q_kp, encoding)
            ranks = rerank(sim, db_kp, q_kp, stage, expansion, fused)
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
        print(f"{args.keypoints} x {encoding}", row["rerank"], row["expansion"] or "", "|", cells, f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
