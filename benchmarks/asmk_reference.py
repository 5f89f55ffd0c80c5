"""instar's ASMK* side by side with the reference implementation, the PyPI `asmk` package (Tolias / Jenicek's ASMK,
as used by HOW), on the same local features and the same codebook.

    pip install asmk          # not a dependency of instar: this benchmark alone needs it (it builds a small Cython part)
    python benchmarks/asmk_reference.py [--dataset mini-rparis6k --data ../shared/data/mini-rparis6k]
        [--train ../shared/data/smvs-dvd-covers/jpg] [--preset asmk-star-lite0] [--cache build/d2r-cache]

Both sides get the features of the preset's fitted extractor (benchmarks/local_features_cache.py: fitted on --train
as `instar eval --train` does, database and query crops described once) and instar's codebook (handed to the
package's `Codebook.index`). The package is configured as Detect-to-Retrieve's ASMK*: single assignment for the
database and the queries, binarised residuals, no IDF, selectivity alpha = 3, threshold 0. Query time covers the
same steps on both sides, from the query's local descriptors: word assignment, aggregation, inverted-file search,
ranking of the whole database (median over queries, one thread: the benchmark sets OMP/MKL threads to 1 before
importing numpy and faiss). Index size: instar's stored columns (words int32, packed codes, gamma float32) and its
in-memory postings; the package's inverted file (vectors, image ids; the used part of its growing arrays).

The last line reads `map_diff_medium=D map_diff_hard=D query_speedup=R` (mAP points, absolute; query time of the
package / instar's).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from local_features_cache import describe_dataset, fitted_extractor  # noqa: E402

from instar.asmk import aggregate  # noqa: E402
from instar.inverted_file import from_aggregated  # noqa: E402


def instar_side(db, queries, codebook, binary: bool):
    """Rankings, per-query times {assign, aggregate, search} (medians, s), stored bytes, postings bytes, build s."""
    centroids = codebook.centroids
    t0 = time.perf_counter()
    aggs = [aggregate(d, codebook.assign(d), centroids, kernel="asmk", binary=binary) for d in db.descriptors]
    ivf = from_aggregated(aggs, len(centroids))
    build = time.perf_counter() - t0
    ranks, times = [], []
    for d in queries.descriptors:
        t0 = time.perf_counter()
        words = codebook.assign(d)
        t1 = time.perf_counter()
        q = aggregate(d, words, centroids, kernel="asmk", binary=binary)
        t2 = time.perf_counter()
        scores = ivf.scores(q, kernel="asmk", alpha=3.0, tau=0.0)
        ranks.append(np.argsort(-scores, kind="stable"))
        t3 = time.perf_counter()
        times.append((t1 - t0, t2 - t1, t3 - t2))
    stored = sum(len(a) * (4 + a.data.shape[1] * a.data.itemsize) + 4 * len(a.gamma) for a in aggs)
    return np.stack(ranks), _medians(times), stored, ivf.nbytes, build


def _medians(times) -> dict:
    t = np.array(times)
    return {"assign": float(np.median(t[:, 0])), "aggregate": float(np.median(t[:, 1])),
            "search": float(np.median(t[:, 2])), "total": float(np.median(t.sum(1)))}


def package_side(db, queries, centroids, binary: bool):
    """The same from the package: its query_ivf steps (Codebook.quantize, ASMKKernel.aggregate_image, IVF.search,
    exactly as ASMKMethod.accumulate_scores runs them), timed one by one."""
    from asmk import asmk_method
    from asmk import codebook as cdb_pkg
    from asmk import index as idx_pkg

    params = {
        "index": {"gpu_id": None},
        "train_codebook": {"codebook": {"size": len(centroids)}},
        "build_ivf": {"kernel": {"binary": binary}, "ivf": {"use_idf": False},
                      "quantize": {"multiple_assignment": 1}, "aggregate": {}},
        "query_ivf": {"quantize": {"multiple_assignment": 1}, "aggregate": {}, "search": {"topk": None},
                      "similarity": {"similarity_threshold": 0.0, "alpha": 3.0}},
    }
    cdb = cdb_pkg.Codebook(idx_pkg.initialize_index(None), size=len(centroids))
    cdb.index(np.ascontiguousarray(centroids, dtype=np.float32))
    method = asmk_method.ASMKMethod(params, {}, codebook=cdb)
    vecs = np.concatenate(db.descriptors).astype(np.float32)
    imids = np.repeat(np.arange(len(db.descriptors)), [len(d) for d in db.descriptors])
    t0 = time.perf_counter()
    method = method.build_ivf(vecs, imids)
    build = time.perf_counter() - t0
    qp = params["query_ivf"]
    similarity = lambda *x: method.kernel.similarity(*x, **qp["similarity"])  # noqa: E731
    ranks, times = [], []
    for d in queries.descriptors:
        d = d.astype(np.float32)
        t0 = time.perf_counter()
        quantized = method.codebook.quantize(d, **qp["quantize"])
        t1 = time.perf_counter()
        aggregated = method.kernel.aggregate_image(*quantized, **qp["aggregate"])
        t2 = time.perf_counter()
        r, _ = method.inverted_file.search(*aggregated, **qp["search"], similarity_func=similarity)
        t3 = time.perf_counter()
        ranks.append(r)
        times.append((t1 - t0, t2 - t1, t3 - t2))
    # the whole query_ivf call gives the same ranking (checked on the first query)
    _, _, r0, _ = method.query_ivf(queries.descriptors[0].astype(np.float32), np.zeros(len(queries.descriptors[0]), np.int64))
    assert np.array_equal(r0[0], ranks[0])
    ivf = method.inverted_file
    used = sum(int(c) * (v.shape[1] * v.itemsize + i.itemsize) for c, v, i in
               zip(ivf.counts, ivf.ivf_vecs, ivf.ivf_image_ids) if v is not None)
    allocated = sum(v.nbytes + i.nbytes for v, i in zip(ivf.ivf_vecs, ivf.ivf_image_ids) if v is not None)
    return np.stack(ranks), _medians(times), used, allocated, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mini-rparis6k")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mini-rparis6k"))
    ap.add_argument("--train", type=Path, default=Path("../shared/data/smvs-dvd-covers/jpg"))
    ap.add_argument("--preset", default="asmk-star-lite0")
    ap.add_argument("--cache", type=Path, default=Path("build/d2r-cache"))
    args = ap.parse_args()
    try:
        import asmk  # noqa: F401
    except ImportError:
        sys.exit("this benchmark compares with the PyPI 'asmk' package: pip install asmk")
    ex = fitted_extractor(args.preset, args.train, args.cache)
    ds, db, queries = describe_dataset(ex, args.dataset, args.data, args.cache, ex.preset.name)
    codebook = ex.pooling.codebook
    n = len(db.descriptors)
    print(f"{args.dataset} (subset results: {n} database images, {len(queries.descriptors)} query crops) | features "
          f"of preset {ex.preset.name} ({np.mean([len(d) for d in db.descriptors]):.0f} per image, "
          f"{db.descriptors[0].shape[1]}-D), PCA/codebook trained on {args.train} | codebook {len(codebook.centroids)} "
          f"words, single assignment, alpha 3, tau 0 | one thread")
    print(f"{'kernel':6s} {'side':12s} {'mAP Medium':>10s} {'mAP Hard':>9s} {'ms/query':>9s} {'assign':>7s} "
          f"{'aggreg.':>7s} {'search':>7s} {'index KB':>9s} {'B/image':>8s} {'build s':>8s}")
    last = None
    for binary in (False, True):
        kernel = "ASMK*" if binary else "ASMK"
        r_i, t_i, stored, ivf_bytes, b_i = instar_side(db, queries, codebook, binary)
        r_p, t_p, used, allocated, b_p = package_side(db, queries, codebook.centroids, binary)
        m_i, m_p = ds.evaluate(r_i).metrics, ds.evaluate(r_p).metrics
        for side, m, t, size, b, note in (
                ("instar", m_i, t_i, stored, b_i, f"stored columns; in-memory postings {ivf_bytes / 1024:.1f} KB"),
                ("asmk 0.1.1", m_p, t_p, used, b_p, f"inverted file, used part; allocated {allocated / 1024:.1f} KB")):
            print(f"{kernel:6s} {side:12s} {100 * m['medium']['map']:10.2f} {100 * m['hard']['map']:9.2f} "
                  f"{1000 * t['total']:9.2f} {1000 * t['assign']:7.2f} {1000 * t['aggregate']:7.2f} "
                  f"{1000 * t['search']:7.2f} {size / 1024:9.1f} {size / n:8.0f} {b:8.2f}  ({note})")
        same = float(np.mean([np.array_equal(a, b) for a, b in zip(r_i, r_p)]))
        kernel_part = (t_p["aggregate"] + t_p["search"]) / (t_i["aggregate"] + t_i["search"])
        print(f"{kernel:6s} identical full rankings for {100 * same:.0f}% of the queries; query time ratio "
              f"package / instar: {t_p['total'] / t_i['total']:.2f} whole query (both assign words with the same exact "
              f"faiss search), {kernel_part:.2f} aggregation + inverted-file search")
        if binary:
            last = (abs(100 * (m_i["medium"]["map"] - m_p["medium"]["map"])),
                    abs(100 * (m_i["hard"]["map"] - m_p["hard"]["map"])), t_p["total"] / t_i["total"])
    print(f"map_diff_medium={last[0]:.2f} map_diff_hard={last[1]:.2f} query_speedup={last[2]:.2f}")


if __name__ == "__main__":
    main()
