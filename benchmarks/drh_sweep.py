"""DRH sweep: code lengths, codings, maps, lambda, M and the QEs on the two subset datasets, from cached features.

    python benchmarks/drh_features.py                  # once: the trunk's maps of every image (cached in /tmp)
    python benchmarks/drh_sweep.py table1 [--taps head,stride32] [--bits 128,256,512,1024,2048,4096]
    python benchmarks/drh_sweep.py table2 [--tap head] [--lambdas 0.4,0.5,0.6,0.7] [--tops 25,50,100,200,400,800]
    python benchmarks/drh_sweep.py table3 [--tap head]
    python benchmarks/drh_sweep.py collapse [--tap head] [--set epochs=20 ...]   # DRH training, per epoch

Datasets: mini-rparis6k (238 images, 12 cropped queries; Medium / Hard), codings learned on smvs-dvd-covers' 500
photos; smvs-dvd-covers (100 cover scans, 400 phone photos as queries; mAP), codings learned on mini-rparis6k's
250 photos. Regions: DRH's sliding windows (instar.regions.sliding) on the scale-1 map, RoI max-pooled and L2
(instar.pooling.region_mac, as `region_pooling.method = "max"`); global vector: MAC, per scale L2, summed, L2
(`pooling.method = "mac"`). Codings are instar's `CODINGS` entries, fitted on the training set's region
descriptors; search runs instar's own stages (`hamming` filter, `ldrh`, `gqe`, `lqe`, `gqe+lqe`, and the float
`knn` + `ca-sr` of maxconv-lite0) on a `Database` built from the same vectors and codes an index would hold. So
these are the presets' arithmetic without their repeated forwards; the preset rows of the README come from
`instar eval`. Every figure is a subset result.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from instar.store.columns import CODES, REGION_CODES
from instar.extract.pooling.functional import region_mac
from instar.extract.regions.sliding import sliding_windows
from instar.core.registry import CODINGS
from instar.search import Database, Query, RegionTable, SearchPipeline
from instar.presets import load_preset
from instar.core.norms import l2n

import drh_features as feats

GROUPS = {"paris": ("paris.db", "paris.q", "smvs.train"), "smvs": ("smvs.db", "smvs.q", "paris.train")}


class Described:
    """One group's vectors: global (N, C) per item and region descriptors (T, C) with per-item counts."""

    def __init__(self, cache: Path, pairs, tap: str, overlap: float, multiscale: bool):
        g, regions, counts, boxes = [], [], [], []
        for path, box in pairs:
            f = feats.load(cache, path, box)
            macs = f[f"mac.{tap}"]
            g.append(l2n(macs.sum(axis=0) if multiscale else macs[0]))
            fmap = torch.from_numpy(f[f"map.{tap}"])
            W, H = (int(v) for v in f["size"])
            cells = sliding_windows(fmap.shape[1], fmap.shape[2], overlap, 0.8, aspect=W / H)
            regions.append(l2n(region_mac(fmap, cells)).numpy())
            counts.append(len(cells))
            boxes.append(cells.astype(np.float32))
        self.vectors = np.stack(g).astype(np.float32)
        self.regions = np.concatenate(regions).astype(np.float32)
        self.counts = np.array(counts, np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.boxes = np.concatenate(boxes)


def describe_all(cache: Path, tap: str, overlap: float, multiscale: bool) -> dict[str, Described]:
    items = feats.items()
    return {group: Described(cache, items[group], tap, overlap, multiscale)
            for group in ("paris.db", "paris.q", "smvs.db", "smvs.q", "paris.train", "smvs.train")}


def score(ds, ranks: np.ndarray) -> dict:
    m = ds.evaluate(ranks).metrics
    return {p: round(100 * m[p]["map"], 2) for p in ("medium", "hard") if p in m}


def database(db: Described, codes=None, region_codes=None) -> Database:
    out = Database(np.arange(len(db.vectors), dtype=np.int64), db.vectors,
                   RegionTable(db.starts, db.counts, db.boxes, db.regions))
    if codes is not None:
        out.cached(CODES, lambda: codes)
        out.cached(REGION_CODES, lambda: (db.starts, db.counts, region_codes))
    return out


def run_pipeline(preset, ds, db: Database, queries: Described, query_codes=None) -> dict:
    pipe = SearchPipeline(preset)
    ranks = []
    for i in range(len(queries.vectors)):
        q = Query(vector=queries.vectors[i])
        q.__dict__["box_descriptor"] = queries.vectors[i]  # the crop's own MAC (the query is the cropped patch)
        if query_codes is not None:
            q.cached(CODES, lambda i=i: query_codes[i])
        ranks.append(pipe(db, q, len(db)).positions)
    return score(ds, np.stack(ranks))


FITTED = feats.CACHE / "fitted"  # learned codings, by method, length, parameters and training regions


def fit(method: str, bits: int, train: Described, params: dict, cache: bool = True):
    """A coding fitted on the training set's regions (seed 0), kept in FITTED so Tables 2 and 3 reuse Table 1's."""
    coder = CODINGS.build(method, bits=bits, **params)
    key = hashlib.sha1(json.dumps([method, bits, sorted(params.items())]).encode() + train.regions.tobytes()).hexdigest()[:20]
    path = FITTED / f"{method}-{bits}-{key}.npz"
    if cache and path.exists():
        with np.load(path) as z:
            coder.load_state({k: z[k] for k in z.files})
        return coder, float("nan")
    t0 = time.perf_counter()
    coder.fit(train.regions, np.random.default_rng(0))
    secs = time.perf_counter() - t0
    FITTED.mkdir(parents=True, exist_ok=True)
    np.savez(path, **coder.state())
    return coder, secs


def bit_stats(codes: np.ndarray) -> dict:
    ones = np.unpackbits(codes, axis=1).mean(axis=0)
    return {"constant_bits": round(float(np.mean((ones == 0) | (ones == 1))), 3),
            "ones": round(float(ones.mean()), 3), "unique_codes": int(len(np.unique(codes, axis=0)))}


def parse_sets(sets: list[str]) -> dict:
    out = {}
    for s in sets or []:
        k, _, v = s.partition("=")
        if v.lower() in ("true", "false"):
            out[k] = v.lower() == "true"
            continue
        for cast in (int, float):
            try:
                v = cast(v)
                break
            except ValueError:
                continue
        out[k] = v
    return out


def table1(args, datasets) -> None:
    for tap in args.taps.split(","):
        for multiscale in (True, False) if args.scales == "both" else (args.scales == "multi",):
            t0 = time.perf_counter()
            d = describe_all(args.cache, tap, 0.6, multiscale)
            print(f"# {tap} multiscale={multiscale}: described in {time.perf_counter() - t0:.0f} s", flush=True)
            for name, ds in datasets.items():
                dbg, qg, tg = GROUPS[name]
                db, q, train = d[dbg], d[qg], d[tg]
                ranks = np.argsort(-(q.vectors @ db.vectors.T), axis=1, kind="stable")
                print(json.dumps({"data": name, "tap": tap, "multiscale": multiscale, "method": "float-mac",
                                  "bits": 32 * db.vectors.shape[1], **score(ds, ranks)}), flush=True)
                for method in args.methods.split(","):
                    method, _, variant = method.partition(":")
                    params = {"objective": variant} if method == "drh" and variant else {}
                    params.update(parse_sets(args.set) if method == "drh" else {})
                    for bits in [int(b) for b in args.bits.split(",")]:
                        row = {"data": name, "tap": tap, "multiscale": multiscale, "method": method + (f":{variant}" if variant else ""), "bits": bits}
                        try:
                            coder, secs = fit(method, bits, train, params)
                        except ValueError as e:
                            print(json.dumps({**row, "skipped": str(e)[:80]}), flush=True)
                            continue
                        dbc, qc = coder.codes(db.vectors), coder.codes(q.vectors)
                        from instar.core import binary as hamming
                        _, ranks = hamming.knn(dbc, qc, len(dbc))
                        print(json.dumps({**row, **score(ds, ranks), "fit_s": round(secs, 1), **bit_stats(dbc)}), flush=True)


def table2(args, datasets) -> None:
    """gDRH + lDRH over lambda x M (and gDRH alone, and the float MAC + CA-SR analogue)."""
    base = load_preset("drh-lite0").with_overrides({"expansion.method": "none"})
    # one hashing layer per dataset, learned on the training set's lambda = 0.6 regions (Table 1's and Table 3's),
    # codes every lambda's regions: the rows differ by the regions searched, not by the layer
    d06 = describe_all(args.cache, args.tap, 0.6, True)
    coders = {name: fit("drh", args.bits_one, d06[GROUPS[name][2]], {"objective": "balanced", **parse_sets(args.set)})[0]
              for name in datasets}
    for overlap in [float(v) for v in args.lambdas.split(",")]:
        d = describe_all(args.cache, args.tap, overlap, True)
        for name, ds in datasets.items():
            dbg, qg, tg = GROUPS[name]
            db, q = d[dbg], d[qg]
            coder = coders[name]
            data = database(db, coder.codes(db.vectors), coder.codes(db.regions))
            qc = coder.codes(q.vectors)
            row = {"data": name, "lambda": overlap, "regions_per_image": round(float(db.counts.mean()), 1)}
            row["gDRH"] = run_pipeline(base.with_overrides({"rerank.method": "none"}), ds, data, q, qc)
            for top in [int(t) for t in args.tops.split(",")]:
                row[f"M={top}"] = run_pipeline(base.with_overrides({"rerank.top": str(top)}), ds, data, q, qc)
            print(json.dumps(row), flush=True)


def table3(args, datasets) -> None:
    d = describe_all(args.cache, args.tap, 0.6, True)
    drh = load_preset("drh-lite0")
    settings = [("gDRH", {"rerank.method": "none", "expansion.method": "none"}),
                ("gDRH+lDRH", {"expansion.method": "none"})]
    settings += [(f"gDRH+gQE(q={qq})", {"rerank.method": "none", "expansion.method": "gqe", "expansion.q": str(qq)})
                 for qq in (4, 5, 6, 7)]
    for qq in (6, 7):
        settings += [(f"gDRH+gQE+lDRH(q={qq})", {"expansion.method": "gqe", "expansion.q": str(qq)}),
                     (f"gDRH+lDRH+lQE(q={qq})", {"expansion.method": "lqe", "expansion.q": str(qq)}),
                     (f"gDRH+gQE+lDRH+lQE(q={qq})", {"expansion.q_global": str(qq), "expansion.q_local": str(qq)})]
    for name, ds in datasets.items():
        dbg, qg, tg = GROUPS[name]
        db, q, train = d[dbg], d[qg], d[tg]
        coder, _ = fit("drh", args.bits_one, train, {"objective": "balanced", **parse_sets(args.set)})
        data = database(db, coder.codes(db.vectors), coder.codes(db.regions))
        qc = coder.codes(q.vectors)
        for label, overrides in settings:
            print(json.dumps({"data": name, "setting": label, **run_pipeline(drh.with_overrides(overrides), ds, data, q, qc)}),
                  flush=True)
        floats = load_preset("maxconv-lite0")
        for label, overrides in (("float MAC", {"rerank.method": "none"}), ("float MAC + CA-SR(400)", {})):
            print(json.dumps({"data": name, "setting": label, **run_pipeline(floats.with_overrides(overrides), ds,
                                                                              database(db), q)}), flush=True)


def collapse(args, datasets) -> None:
    """Per epoch, for each objective: loss, fraction of constant bits and of ones over the training regions, and the
    mAP of the codes after training (the faithful objective's collapse, side by side with the fix)."""
    d = describe_all(args.cache, args.tap, 0.6, True)
    for name, ds in datasets.items():
        dbg, qg, tg = GROUPS[name]
        db, q, train = d[dbg], d[qg], d[tg]
        for objective in ("paper", "balanced"):
            params = {**parse_sets(args.set), "objective": objective}
            coder, secs = fit("drh", args.bits_one, train, params, cache=False)  # its history is the point
            for h in coder.history:
                print(json.dumps({"data": name, "objective": objective, **{k: round(v, 4) for k, v in h.items()}}))
            from instar.core import binary as hamming
            dbc = coder.codes(db.vectors)
            _, ranks = hamming.knn(dbc, coder.codes(q.vectors), len(dbc))
            print(json.dumps({"data": name, "objective": objective, "bits": args.bits_one, **score(ds, ranks),
                              "fit_s": round(secs, 1), **bit_stats(dbc)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("table1", "table2", "table3", "collapse"))
    ap.add_argument("--cache", type=Path, default=feats.CACHE / "724")
    ap.add_argument("--taps", default="head,stride32")
    ap.add_argument("--tap", default="head")
    ap.add_argument("--scales", default="multi", choices=("multi", "single", "both"))
    ap.add_argument("--methods", default="drh:paper,drh:balanced,pca-sign,itq,lsh")
    ap.add_argument("--bits", default="128,256,512,1024,2048,4096")
    ap.add_argument("--bits-one", type=int, default=1024)
    ap.add_argument("--lambdas", default="0.4,0.5,0.6,0.7")
    ap.add_argument("--tops", default="25,50,100,200,400,800")
    ap.add_argument("--data-only", default="paris,smvs")
    ap.add_argument("--set", action="append", help="a drh coding parameter, NAME=VALUE (repeatable)")
    args = ap.parse_args()
    torch.manual_seed(0)
    paris, smvs = feats.datasets()
    datasets = {k: v for k, v in {"paris": paris, "smvs": smvs}.items() if k in args.data_only.split(",")}
    {"table1": table1, "table2": table2, "table3": table3, "collapse": collapse}[args.what](args, datasets)


if __name__ == "__main__":
    main()
