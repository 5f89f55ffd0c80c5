"""Re-time the global families of an index that `benchmarks/scale.py --keep` left behind (its derived ANN files
loaded, not rebuilt), e.g. on an idle machine after a long run on a loaded one:

    python benchmarks/scale_retime.py --index build/scale/gem-1000000.index [--queries 40]
        [--settings "HNSW32" "IVF4096,SQ8" "IVF4096,PQ64"]

The index holds scale.py's state at its end: 1% of the rows removed, so every figure here is with the removed mask
applied (the knn row is the "after removal" figure). Queries are scale.py's (the 40 real gem-lite0 descriptors in
its work folder). Per setting: p50 / p99 over the queries in this process, recall@100 against exact knn, the
filter alone on one snapshot with and without the removed mask (the removal's own cost, same run), and a fresh
process's p50, resident and peak GB (`fresh_process_searches`). Last line: `key=value` pairs.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (sets the one-thread environment before numpy loads)
from scale import K, fresh_process_searches, load, p, recall, timed  # noqa: E402

from instar import Index, search  # noqa: E402
from instar.core.registry import FILTERS  # noqa: E402
from instar.search.types import Database  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--drh-index", type=Path, help="scale.py's kept DRH index: its whole query (gDRH, gQE, lDRH, "
                    "lQE) against exact float knn through the same API, as scale.py times them")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--settings", nargs="*", default=["HNSW32", "IVF4096,SQ8", "IVF4096,PQ64"])
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--rescore", type=int, default=1000)
    args = ap.parse_args()
    work = args.index.parent
    real, _ = scale.real_descriptors(work, 40)
    queries = list(real[:args.queries])
    print(f"{args.index}: machine load {load()}, {os.cpu_count()} cores", flush=True)
    index = Index.open(args.index)
    exact, t_knn = timed(lambda q: search(index, q, k=K), queries)
    out = {"knn_ms": p(t_knn, 50)}
    print(f"knn    p50 {p(t_knn, 50):8.1f} ms  p99 {p(t_knn, 99):8.1f} ms  load {load()}", flush=True)
    for factory in args.settings:
        settings = {"filter.method": "ann", "filter.index": factory}
        if factory.startswith("HNSW"):
            settings["filter.ef_search"] = "128"
        else:
            settings.update({"filter.nprobe": str(args.nprobe), "filter.rescore": str(args.rescore),
                             "filter.train": "30000"})
        search(index, queries[0], k=K, overrides=settings)  # loads the derived file
        got, times = timed(lambda q: search(index, q, k=K, overrides=settings), queries)
        # the filter alone on one snapshot, with the removed rows masked and with the mask dropped
        stage = FILTERS.build_section({"method": "ann", "index": factory,
                                       **{k.split(".")[1]: int(v) for k, v in settings.items()
                                          if k not in ("filter.method", "filter.index")}})
        db = Database.from_index(index)
        bare = replace(db, removed=None, cache={})
        _, t_masked = timed(lambda q: stage.search(db, q, K), queries)
        _, t_bare = timed(lambda q: stage.search(bare, q, K), queries)
        print(f"{factory:14} filter alone: masked p50 {p(t_masked, 50):.1f} ms, unmasked {p(t_bare, 50):.1f} ms "
              f"({p(t_masked, 50) / p(t_bare, 50):.2f}x)", flush=True)
        ms, rss, peak, anon = fresh_process_searches(args.index, scale.np.stack(queries), settings, work)
        key = "".join(c for c in factory.split(",")[-1].lower() if c.isalnum())
        out[f"{key}_ms"], out[f"{key}_recall100"], out[f"{key}_rss_gb"] = p(times, 50), recall(got, exact), rss
        print(f"{factory:14} p50 {p(times, 50):7.1f} ms  p99 {p(times, 99):7.1f} ms  recall@100 {recall(got, exact):.3f}"
              f" | fresh process: p50 {ms:.1f} ms, resident {rss:.2f} GB (anonymous {anon:.2f}), peak {peak:.2f} GB"
              f"  load {load()}",
              flush=True)
    index.close()
    if args.drh_index:
        drh = Index.open(args.drh_index)
        plain = {"filter.method": "knn", "rerank.method": "none", "expansion.method": "none"}
        _, t_plain = timed(lambda q: search(drh, q, k=K, overrides=plain), queries)
        _, t_drh = timed(lambda q: search(drh, q, k=K), queries)
        out["drh_ms"], out["drh_vs_knn"] = p(t_drh, 50), p(t_plain, 50) / p(t_drh, 50)
        print(f"drh    p50 {p(t_drh, 50):8.1f} ms  p99 {p(t_drh, 99):8.1f} ms  (exact float knn on the same index "
              f"{p(t_plain, 50):.1f} ms: {out['drh_vs_knn']:.1f}x)  load {load()}", flush=True)
        drh.close()
    print(" ".join(f"{k}={v:.3g}" for k, v in out.items()))


if __name__ == "__main__":
    main()
