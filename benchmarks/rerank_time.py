"""Re-ranking time per query: CA-SR over the top 100 of the filter, with 40 and with 300 regions per image.

    python benchmarks/rerank_time.py [--images 10000] [--dim 1280] [--queries 50] [--threads 1]

A synthetic database (random unit global and region descriptors, float32, as the index stores them and memory-
mapped from a file as a real index reads them) of `--images` images; each query runs the knn filter, then CA-SR
over the top 100 (the same code `instar search` runs: instar.filter.GlobalKNN, instar.rerank.CASR). Medians over
the queries, in one run, for 40 and 300 regions per image; also the regional-search filter over all regions
(Teichmann et al. eq. 3), whose cost grows with the whole database instead of the top 100.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from instar.search.filter.knn import GlobalKNN
from instar.search.filter.regional import RegionalSearch
from instar.search.rerank.ca_sr import CASR
from instar.search import Database, Query, RegionTable


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def database(tmp: Path, n: int, regions: int, dim: int, rng: np.random.Generator) -> Database:
    """N images with `regions` regions each, descriptors memory-mapped from files like an index's columns."""
    vectors = unit(rng.standard_normal((n, dim), dtype=np.float32))
    descs = np.lib.format.open_memmap(tmp / f"r{regions}.npy", mode="w+", dtype=np.float32, shape=(n * regions, dim))
    for i in range(0, n * regions, 50_000):
        descs[i:i + 50_000] = unit(rng.standard_normal((min(50_000, n * regions - i), dim), dtype=np.float32))
    descs.flush()
    descs = np.load(tmp / f"r{regions}.npy", mmap_mode="r")
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (n * regions, 1))
    table = RegionTable(np.arange(n) * regions, np.full(n, regions), boxes, descs)
    return Database(np.arange(n, dtype=np.int64), vectors, table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{args.images} images, {args.dim}-D float32 descriptors, {args.queries} queries, {args.threads} thread(s)")
    print(f"{'regions/img':>11s} {'filter ms':>9s} {'CA-SR top100 ms':>15s} {'regional ms':>11s} {'region bytes/img':>16s}")
    with tempfile.TemporaryDirectory() as tmp:
        for regions in (40, 300):
            db = database(Path(tmp), args.images, regions, args.dim, rng)
            knn, casr, regional = GlobalKNN(), CASR(top=100), RegionalSearch(pooling="max")
            t_filter, t_casr, t_regional = [], [], []
            for qi in range(args.queries):
                q = Query(vector=db.vectors[qi])
                q.__dict__["box_descriptor"] = np.asarray(db.regions.descriptors[qi * regions + 1])
                t0 = time.perf_counter()
                ranking = knn(db, q, 100)
                t1 = time.perf_counter()
                casr(db, q, ranking)
                t2 = time.perf_counter()
                if qi < 10:
                    regional(db, q, 100)
                    t_regional.append(time.perf_counter() - t2)
                t_filter.append(t1 - t0)
                t_casr.append(t2 - t1)
            ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
            per_image = regions * (args.dim + 4) * 4
            print(f"{regions:11d} {ms(t_filter):9.2f} {ms(t_casr):15.2f} {ms(t_regional):11.1f} {per_image:16d}")


if __name__ == "__main__":
    main()
