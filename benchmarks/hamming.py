"""Hamming search at scale: instar's filter against faiss, the whole DRH query, and float search on the same N.

    python benchmarks/hamming.py [--n 1000000] [--queries 100] [--k 400] [--regions 40] [--repeats 5]

One thread (faiss and torch). N random codes per length (512 and 1024 bits), 100 random query codes searched as
one batch, k = 400; every time is the median over `--repeats` runs of the batch, divided by the number of queries.

1. gDRH filter: instar's `hamming.knn` (the `hamming` filter's kernel: faiss's heap kernel on the codes in place,
   all queries in one pass) against faiss `IndexBinaryFlat.search` in the same run; their top-k distances must be
   identical (the positions of equal distances may differ: both are exact).
2. The whole DRH query: the batched gDRH filter, then for each query instar's lDRH over the top 400 x 40 region
   codes, gQE (q 6) and lQE (q 6) -- the stage objects `instar search` runs (`instar.drh`) on a `Database` whose
   region codes are a memory-mapped file of N x 40 codes, as an index holds them. Also the same query one at a time
   through `SearchPipeline` (preset drh-lite0: the filter then reads all N codes for each query).
3. Float: 512-D float32 exhaustive inner product, faiss `IndexFlatIP`, same N, same batch, k = 400.

The last line: vs_faiss_512=R vs_faiss_1024=R drh_vs_float=R (speed ratios; > 1 means instar is faster):
faiss IndexBinaryFlat time / instar filter time at 512 and 1024 bits, and float IndexFlatIP time / whole DRH
query time at 1024 bits (drh-lite0's length). Peak memory stays under ~4 GB (the 1M x 512 float index is 2 GB;
region codes are read through a memory map).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from instar.core import binary as hamming
from instar.store.columns import CODES, REGION_CODES
from instar.search.rerank.ldrh import LocalRegionHashing
from instar.search.expansion.drh import global_query_expansion, local_query_expansion
from instar.search.codes import similarity
from instar.presets import load_preset
from instar.search import Database, Query, Ranking, RegionTable, SearchPipeline


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls of fn() and its last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def random_codes(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes)


def region_code_file(path: Path, rng: np.random.Generator, n: int, nbytes: int, chunk: int = 2_000_000) -> np.ndarray:
    """n random codes written to `path` in chunks (never all in memory) and mapped back read-only."""
    with open(path, "wb") as f:
        for i in range(0, n, chunk):
            f.write(rng.bytes(min(chunk, n - i) * nbytes))
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, nbytes))


def drh_database(codes: np.ndarray, region_codes: np.ndarray, regions: int) -> Database:
    n = len(codes)
    starts = np.arange(n, dtype=np.int64) * regions
    counts = np.full(n, regions, np.int64)
    total = n * regions
    # boxes and float descriptors are not read by the DRH stages beyond the boxes of the best regions
    boxes = np.broadcast_to(np.array([0, 0, 10, 10], np.float32), (total, 4))
    db = Database(np.arange(n, dtype=np.int64), np.broadcast_to(np.zeros(1, np.float32), (n, 1)),
                  RegionTable(starts, counts, boxes, np.broadcast_to(np.zeros(1, np.float32), (total, 1))))
    db.cached(CODES, lambda: codes)
    db.cached(REGION_CODES, lambda: (starts, counts, region_codes))
    return db


def coded_query(code: np.ndarray) -> Query:
    q = Query(vector=np.ones(1, np.float32))
    q.cached(CODES, lambda: code)
    return q


def drh_query_rest(db: Database, query: Query, ranking: Ranking, k: int) -> Ranking:
    """gQE -> lDRH -> lQE over the top k of a gDRH ranking (what SearchPipeline runs after the filter)."""
    ranking = global_query_expansion(db, ranking, 6, k)
    ranking = LocalRegionHashing(top=k)(db, query, ranking)
    return local_query_expansion(db, query, ranking, 6, k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=400)
    ap.add_argument("--regions", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the region-code files (default: system temp)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, nq, k = args.n, args.queries, args.k
    print(f"N = {n:,} random codes, {nq} queries as one batch, k = {k}, {args.regions} regions per image, 1 thread, "
          f"medians of {args.repeats} runs, per query")
    ratios, drh_ms = {}, {}
    print(f"{'bits':>5s} {'faiss IndexBinaryFlat ms':>24s} {'instar filter ms':>16s} {'ratio':>6s} {'same top-k distances':>20s}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for bits in (512, 1024):
            nbytes = bits // 8
            codes = random_codes(rng, n, nbytes)
            queries = random_codes(rng, nq, nbytes)
            index = faiss.IndexBinaryFlat(bits)
            index.add(codes)
            t_faiss, (d_faiss, _) = timed(lambda: index.search(queries, k), args.repeats)
            del index
            t_instar, (d_instar, p_instar) = timed(lambda: hamming.knn(codes, queries, k), args.repeats)
            same = bool(np.array_equal(d_faiss, d_instar))
            ratios[bits] = t_faiss / t_instar
            print(f"{bits:5d} {1e3 * t_faiss / nq:24.2f} {1e3 * t_instar / nq:16.2f} {ratios[bits]:6.2f} {str(same):>20s}",
                  flush=True)
            if not same:
                raise SystemExit(f"{bits} bits: instar's top-{k} distances differ from IndexBinaryFlat's")

            # the whole DRH query over the same codes, with N x regions region codes in a memory-mapped file
            region_codes = region_code_file(Path(tmp) / f"regions{bits}.u8", rng, n * args.regions, nbytes)
            db = drh_database(codes, region_codes, args.regions)
            qs = [coded_query(queries[i]) for i in range(nq)]

            def batched():
                d, p = hamming.knn(codes, queries, k)
                return [drh_query_rest(db, qs[i], Ranking(p[i], similarity(d[i], bits)), k) for i in range(nq)]
            t_drh, results = timed(batched, args.repeats)
            drh_ms[bits] = 1e3 * t_drh / nq
            pipe = SearchPipeline(load_preset("drh-lite0"))
            singles = []
            for i in range(min(nq, 20)):
                t0 = time.perf_counter()
                r = pipe(db, qs[i], k)
                singles.append(time.perf_counter() - t0)
                assert r.positions.tolist() == results[i].positions.tolist()
            t_rest, _ = timed(lambda: [drh_query_rest(db, qs[i], results[i], k) for i in range(nq)], args.repeats)
            print(f"      whole DRH query (gDRH batched + gQE + lDRH over {k} x {args.regions} regions + lQE): "
                  f"{drh_ms[bits]:.2f} ms/query (of which gQE + lDRH + lQE {1e3 * t_rest / nq:.2f} ms); "
                  f"one query at a time through SearchPipeline: {1e3 * statistics.median(singles):.2f} ms", flush=True)
            del db, region_codes, results, codes
        # float baseline: 512-D exhaustive inner product over the same N, built in chunks (the index holds 2 GB)
        dim = 512
        index = faiss.IndexFlatIP(dim)
        for i in range(0, n, 100_000):
            x = rng.standard_normal((min(100_000, n - i), dim), dtype=np.float32)
            index.add(x / np.linalg.norm(x, axis=1, keepdims=True))
        xq = rng.standard_normal((nq, dim), dtype=np.float32)
        t_float, _ = timed(lambda: index.search(xq, k), args.repeats)
        float_ms = 1e3 * t_float / nq
        del index
    print(f"float 512-D IndexFlatIP: {float_ms:.2f} ms/query; whole DRH query at 512 bits {drh_ms[512]:.2f} ms "
          f"({float_ms / drh_ms[512]:.1f}x faster), at 1024 bits {drh_ms[1024]:.2f} ms ({float_ms / drh_ms[1024]:.1f}x)")
    r = args.regions
    print(f"bytes per image: DRH codes 512 bits {64 + r * 64} (global 64 + {r} regions x 64), 1024 bits "
          f"{128 + r * 128} (+ {r * 16} of region boxes, float32); float 512-D global {4 * dim}, with {r} float "
          f"512-D regions {4 * dim * (1 + r)}")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    print(f"vs_faiss_512={ratios[512]:.2f} vs_faiss_1024={ratios[1024]:.2f} drh_vs_float={float_ms / drh_ms[1024]:.2f}")


if __name__ == "__main__":
    main()
