"""Detect-to-Retrieve's Table 1 / Fig. 4 shape on this project's data: method x regions per image x mAP x relative
database size, for the aggregated kernels and their regional variants.

    python benchmarks/d2r_tables.py --dataset mini-rparis6k --data ../shared/data/mini-rparis6k \\
        --train ../shared/data/smvs-dvd-covers/jpg [--preset asmk-star-lite0] [--cache build/d2r-cache]

The preset's extractor is fitted on --train exactly as `instar eval --train` fits it; the database and the queries
are described once (benchmarks/local_features_cache.py) and every row is computed from those features with
instar's own components: `instar.asmk.aggregate` (what the `asmk` pooling stores), the inverted file
(`instar.inverted_file`, what the `asmk` filter searches) and `instar.asmk.reduce_items` (eq. 3 / 4 pooling).

Regions: the whole image is always region 1; "RPN n" (the D2R rows) adds the n best learned proposals (the `rpn`
regions entry with its packaged head: EfficientNet-Lite0 stride-32 map, trained on smvs-dvd-covers covers 001-050;
the paper varies its detector's threshold, we vary the count); "SS n" the first n selective-search boxes
(Detect-to-Retrieve's SS baseline takes the top {1, 2, 5, 10}); "RMAC-B L" the R-MAC grid of L levels.

Relative size: bytes of the stored aggregated representation (per entry: word id 4 B + residual (packed bits
D/8 B, or D float32) + region id 2 B when regions are stored separately; per item: gamma 4 B) over the same for
single-image ASMK*. Query time: the inverted-file search per query (the query's aggregation excluded).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from local_features_cache import describe_dataset, fitted_extractor, rpn_boxes

from instar.asmk.kernel import aggregate, region_members, with_whole_image
from instar.core.binary import pack_signs
from instar.core.groups import reduce_items
from instar.asmk.inverted_file import from_aggregated
from instar.search.rerank.sp import SpatialVerification

SS_COUNTS = (1, 2, 5, 10, 20, 50)
SP_ROWS = {("ASMK*", None), ("D2R-R-ASMK*", ("rpn", 5))}  # rows also re-ranked by spatial verification


def bytes_of(aggs, separate: bool) -> int:
    total = 0
    for a in aggs:
        total += len(a) * (4 + a.data.shape[1] * a.data.itemsize + (2 if separate else 0)) + 4 * len(a.gamma)
    return total


def members_for(db, i: int, regions: tuple[str, int] | None):
    if regions is None:
        return None, 1
    kind, n = regions
    if kind == "rpn":  # the whole image, then the n best proposals
        boxes = db.rpn[i][:n + 1]
    else:
        boxes = db.ss[i][:n] if kind == "ss" else db.rmac[n][i]
    boxes = with_whole_image(boxes, tuple(db.sizes[i]))
    return region_members(db.points[i], boxes), len(boxes)


def spatially_verified(ranks, scores, db, queries, words_db, words_q, centroids, top=100, **sp_params):
    """The `sp` re-ranker's rule on the top `top` of each ranking: inliers + filter score. (ranks, ms per query)."""
    sp = SpatialVerification(top=top, **sp_params)
    dim = centroids.shape[1]
    codes_db = [pack_signs(d - centroids[w]) for d, w in zip(db.descriptors, words_db)]
    out, times = [], []
    for j, (r, sc) in enumerate(zip(ranks, scores)):
        q = (words_q[j], pack_signs(queries.descriptors[j] - centroids[words_q[j]]), queries.points[j][:, :2])
        t0 = time.perf_counter()
        head = r[:top]  # image indices, best first; sc holds their filter scores in the same order
        inl = np.array([sp.verify_pair(q, (words_db[i], codes_db[i], db.points[i][:, :2]), dim)[0] for i in head])
        new = inl + sc[:len(head)]
        order = np.argsort(-new, kind="stable")
        out.append(np.concatenate([head[order], r[top:]]))
        times.append(time.perf_counter() - t0)
    return np.stack(out), 1000 * float(np.median(times))


def evaluate(ds, db, queries, words_db, words_q, centroids, *, kernel, binary, aggregation, regions, pooling="max"):
    aggs, n_regions = [], []
    for i in range(len(db.points)):
        members, r = members_for(db, i, regions)
        n_regions.append(r)
        aggs.append(aggregate(db.descriptors[i], words_db[i], centroids, kernel=kernel, binary=binary,
                              aggregation=aggregation, members=members))
    ivf = from_aggregated(aggs, len(centroids))
    separate = aggregation == "separate"
    how = pooling if separate else "single"
    ranks, times, image_scores = [], [], []
    for j in range(len(queries.points)):
        q = aggregate(queries.descriptors[j], words_q[j], centroids, kernel=kernel, binary=binary, aggregation="image")
        t0 = time.perf_counter()
        scores = ivf.scores(q, kernel=kernel)
        image, _ = reduce_items(scores, ivf.item_row, len(aggs), how)
        ranks.append(np.argsort(-image, kind="stable"))
        image_scores.append(image[ranks[-1]])
        times.append(time.perf_counter() - t0)
    report = ds.evaluate(np.stack(ranks))
    return (report, float(np.mean(n_regions)), bytes_of(aggs, separate), 1000 * float(np.median(times)),
            np.stack(ranks), np.stack(image_scores))


def configurations(kinds=("rpn", "ss")):
    yield "ASMK*", "asmk", True, "image", None, "max"
    yield "ASMK", "asmk", False, "image", None, "max"
    yield "VLAD", "vlad", False, "image", None, "max"
    for lv in (1, 2, 3):
        yield "RMACB-ASMK* (regional search, max)", "asmk", True, "separate", ("rmac", lv), "max"
    for lv in (1, 2, 3):
        yield "RMACB-R-ASMK*", "asmk", True, "regions", ("rmac", lv), "max"
    for kind in kinds:
        tag = "D2R" if kind == "rpn" else "SS"
        for n in (1, 2, 5, 10):
            yield f"{tag}-ASMK* (regional search, max)", "asmk", True, "separate", (kind, n), "max"
        for n in (1, 2, 5, 10):
            yield f"{tag}_AVG-ASMK* (regional search, mean)", "asmk", True, "separate", (kind, n), "mean"
        for n in SS_COUNTS:
            yield f"{tag}-R-ASMK*", "asmk", True, "regions", (kind, n), "max"
        for n in SS_COUNTS:
            yield f"{tag}-R-ASMK", "asmk", False, "regions", (kind, n), "max"
        for n in SS_COUNTS:
            yield f"{tag}-Naive-R-ASMK", "asmk", False, "naive", (kind, n), "max"
        for n in SS_COUNTS:
            yield f"{tag}-R-VLAD", "vlad", False, "regions", (kind, n), "max"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--preset", default="asmk-star-lite0")
    ap.add_argument("--cache", type=Path, default=Path("build/d2r-cache"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override SECTION.KEY=VALUE")
    ap.add_argument("--only", default="", help="comma-separated method names to run (default: all)")
    ap.add_argument("--no-sp", action="store_true", help="skip the spatial verification rows")
    ap.add_argument("--sp-threshold", type=float, default=20.0, help="SP RANSAC reprojection threshold, pixels")
    ap.add_argument("--sp-min-similarity", type=float, default=0.25, help="SP: least sign similarity of a match")
    args = ap.parse_args()
    overrides = dict(s.split("=", 1) for s in args.sets)
    ex = fitted_extractor(args.preset, args.train, args.cache, overrides)
    tag = ex.preset.name + ("-" + hashlib.sha1(ex.preset.extraction_toml().encode()).hexdigest()[:8] if overrides else "")
    ds, db, queries = describe_dataset(ex, args.dataset, args.data, args.cache, tag)
    db.rpn = rpn_boxes(args.dataset, args.data, args.cache, ex.preset["image"]["max_size"])
    centroids = ex.pooling.codebook.centroids
    words_db = [ex.pooling.codebook.assign(d) for d in db.descriptors]
    words_q = [ex.pooling.codebook.assign(d) for d in queries.descriptors]
    print(f"{args.dataset} (subset results) | features of preset {ex.preset.name} | codebook {len(centroids)} words, "
          f"PCA/codebook trained on {args.train} ({ex.preset['train']['max_images']} images at most) | "
          f"{np.mean([len(p) for p in db.points]):.0f} local features per database image")
    protocols = [p for p in ("medium", "hard", "all") if p in ds.evaluate(np.tile(np.arange(len(ds.database)), (len(ds.queries), 1))).metrics]
    head = f"{'method':38s} {'regions':>9s} {'reg/img':>7s} " + " ".join(f"{'mAP ' + p:>10s}" for p in protocols) + \
        f" {'rel.size':>8s} {'B/img':>8s} {'ms/query':>8s}"
    print(head)
    base = None
    only = set(filter(None, args.only.split(",")))
    for name, kernel, binary, aggregation, regions, pooling in configurations():
        if only and name not in only:
            continue
        report, per_img, nbytes, ms, ranks, scores = evaluate(
            ds, db, queries, words_db, words_q, centroids, kernel=kernel, binary=binary, aggregation=aggregation,
            regions=regions, pooling=pooling)
        if base is None:
            base = nbytes
        label = "-" if regions is None else f"{ {'ss': 'SS', 'rpn': 'RPN', 'rmac': 'RMAC-B'}[regions[0]]} {regions[1]}"
        maps = " ".join(f"{100 * report.metrics[p]['map']:10.2f}" for p in protocols)
        print(f"{name:38s} {label:>9s} {per_img:7.2f} {maps} {nbytes / base:8.2f} {nbytes / len(db.points):8.0f} "
              f"{ms:8.2f}", flush=True)
        if (name, regions) in SP_ROWS and not args.no_sp:
            sp_ranks, sp_ms = spatially_verified(ranks, scores, db, queries, words_db, words_q, centroids,
                                                 threshold=args.sp_threshold, min_similarity=args.sp_min_similarity)
            sp_report = ds.evaluate(sp_ranks)
            maps = " ".join(f"{100 * sp_report.metrics[p]['map']:10.2f}" for p in protocols)
            print(f"{name + ' + SP (top 100)':38s} {label:>9s} {per_img:7.2f} {maps} {'':8s} {'':8s} "
                  f"{ms + sp_ms:8.2f}  (SP alone {sp_ms:.1f} ms/query; threshold {args.sp_threshold} px, "
                  f"min_similarity {args.sp_min_similarity})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
