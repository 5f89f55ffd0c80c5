"""Search time per query on a 100k-image index for a global vector + `local-sp` preset, by its parts:

    python benchmarks/search_time_100k.py --dim 1792 --top 30 --keypoints 150 [--queries 20]

- the filter: exact inner product (faiss, as `filter.method = "knn"`) of one query against N random unit vectors
  of the preset's dimension (N = 100,000: the ranking's cost does not depend on the values);
- the re-ranker: `LocalVerification.verify_pair` on `top` candidates whose stored keypoints are real (the
  smvs-dvd-covers database images' `keypoints` strongest, as an index stores them), against real queries'
  keypoints (its phone photos);
- the query's own keypoints (RootSIFT of the photo at 640 px).

The query's global description (the trunks) is timed by benchmarks/extraction_speed.py, not here. Median ms.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from instar.evaluation.datasets import load_dataset
from instar.extract.images import load_image, resize_longest
from instar.extract.local_keypoints import SCALE, keypoints
from instar.search.rerank.local_sp import LocalVerification
from instar.search import knn

DATA = Path("/work/shared/data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--keypoints", type=int, default=150)
    ap.add_argument("--query-keypoints", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    db = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    ds = load_dataset("smvs-dvd-covers", data=DATA / "smvs-dvd-covers")
    stored = []
    for p in ds.database[: args.top]:
        im = resize_longest(load_image(p), 1024)
        pts, desc = keypoints(im, 640, args.keypoints)
        stored.append((pts, np.rint(desc * SCALE).astype(np.float32)))
    stage = LocalVerification(top=args.top, query_keypoints=args.query_keypoints)
    t_knn, t_kp, t_verify = [], [], []
    for q in ds.queries[: args.queries]:
        v = rng.standard_normal((1, args.dim)).astype(np.float32)
        t0 = time.perf_counter()
        knn(db, v / np.linalg.norm(v), max(100, args.top))
        t_knn.append(time.perf_counter() - t0)
        im = resize_longest(load_image(q.image), 1024)
        t0 = time.perf_counter()
        q_xy, q_desc = keypoints(im, 640, args.query_keypoints)
        q_desc = np.rint(q_desc * SCALE).astype(np.float32)
        t_kp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for d_xy, d_desc in stored:
            stage.verify_pair(d_xy, d_desc, q_xy, q_desc)
        t_verify.append(time.perf_counter() - t0)
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    print(f"N = {args.n}, D = {args.dim}: knn {ms(t_knn):.1f} ms; query keypoints {ms(t_kp):.1f} ms; "
          f"verify top {args.top} ({args.keypoints} stored keypoints each) {ms(t_verify):.1f} ms; "
          f"total {ms(t_knn) + ms(t_kp) + ms(t_verify):.1f} ms per query (median of {len(t_knn)})")


if __name__ == "__main__":
    main()
