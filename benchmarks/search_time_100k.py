"""Search time per query on a 100k-image index for a global vector + `local-sp` preset, by its parts:

    python benchmarks/search_time_100k.py --dim 1792 --top 50 --keypoints 600 --encoding p64q4 [--queries 20]

- the filter: exact inner product (faiss, as `filter.method = "knn"`) of one query against N random unit vectors
  of the preset's dimension (N = 100,000: the ranking's cost does not depend on the values);
- the re-ranker on `top` candidates whose stored keypoints are real (the smvs-dvd-covers database images'
  `keypoints` strongest, encoded as an index stores them), against real queries' keypoints (its phone photos):
  batched (`matches_of_many` over all candidates, then RANSAC each: what the re-ranker runs) and, in the same run,
  one candidate at a time (`verify_pair`), with the ratio of the two;
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
from instar.extract.local_keypoints import keypoints, stored_levels
from instar.search.expansion.manifold import alpha_dba
from instar.search.rerank.local_sp import LocalVerification
from instar.search import knn

DATA = Path("/work/shared/data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1792)
    ap.add_argument("--top", type=int, default=50)
    ap.add_argument("--keypoints", type=int, default=600)
    ap.add_argument("--encoding", default="p64q4")
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
        stored.append((pts, stored_levels(desc, args.encoding)))
    stage = LocalVerification(top=args.top, query_keypoints=args.query_keypoints)
    t_knn, t_kp, t_verify, t_loop, t_dba = [], [], [], [], []
    for q in ds.queries[: args.queries]:
        v = rng.standard_normal((1, args.dim)).astype(np.float32)
        t0 = time.perf_counter()
        _, head = knn(db, v / np.linalg.norm(v), max(100, args.top))
        t_knn.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # the default's expansion: alpha-DBA on the top 100 (its vectors read, re-scored)
        alpha_dba(np.asarray(db[np.sort(np.asarray(head).ravel()[:100])]), 3, 3.0) @ v.ravel()
        t_dba.append(time.perf_counter() - t0)
        im = resize_longest(load_image(q.image), 1024)
        t0 = time.perf_counter()
        q_xy, q_desc = keypoints(im, 640, args.query_keypoints)
        q_desc = stored_levels(q_desc, args.encoding)
        t_kp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batched = stage.verify_many(stored, q_xy, q_desc)[0].tolist()
        t_verify.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loop = [stage.verify_pair(d_xy, d_desc, q_xy, q_desc)[0] for d_xy, d_desc in stored]
        t_loop.append(time.perf_counter() - t0)
        # RANSAC is randomised: the matches are equal (tests/test_local_verification.py), inlier counts nearly
        assert sum(abs(a - b) for a, b in zip(batched, loop)) <= 2 * len(stored), (batched, loop)
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    import os
    print(f"N = {args.n}, D = {args.dim}: knn {ms(t_knn):.1f} ms; query keypoints {ms(t_kp):.1f} ms; "
          f"verify top {args.top} ({args.keypoints} stored keypoints each, {args.encoding}) {ms(t_verify):.1f} ms "
          f"batched, {ms(t_loop):.1f} ms one candidate at a time ({ms(t_loop) / ms(t_verify):.2f}x); "
          f"alpha-DBA on the top 100 {ms(t_dba):.1f} ms; "
          f"total {ms(t_knn) + ms(t_kp) + ms(t_verify) + ms(t_dba):.1f} ms per query (median of {len(t_knn)}); "
          f"load {os.getloadavg()}")
    print(f"knn_ms={ms(t_knn):.1f} query_keypoints_ms={ms(t_kp):.1f} verify_ms={ms(t_verify):.1f} "
          f"verify_loop_ms={ms(t_loop):.1f} dba_ms={ms(t_dba):.1f} total_ms={ms(t_knn) + ms(t_kp) + ms(t_verify) + ms(t_dba):.1f}")


if __name__ == "__main__":
    main()
