"""Scale benchmark (issue 17): indexes of N synthetic rows written through `Index.add_descriptions`, searched through
`instar.search()` (a fresh `Searcher` per query, as a user's call) and through `instar serve` over HTTP.

    python benchmarks/scale.py --n 100000 [--queries 40] [--real 40] [--work DIR] [--skip drh,asmk,http]

Descriptors. `--real` photos of mini-rparis6k (`../shared/data/mini-rparis6k/jpg`) are described by gem-lite0
(EfficientNet-Lite0 head, GeM, 724 px, 3 scales: 1280-D, non-negative, unit norm). Synthetic row i is a mixture
that keeps their statistics: w1 r_a + w2 r_b + w3 r_c over three random real descriptors (Dirichlet(0.3) weights,
so most rows lie near one real photo, like near-duplicates and views of one place) plus |N(0, 1)| noise scaled by
0.5 x each dimension's std over the real set, L2-normalised. Queries are the real descriptors themselves (timed as
precomputed descriptors, so the trunk's forward is not counted) and, end to end, the real photos.

Per family (p50 / p99 over the queries, ms, k = 100):
- knn: exact inner product (`filter.method = knn`), then again after 1% of the rows were removed (removed_ratio);
- ann: `filter.method = ann`, `filter.index = HNSW32`, ef_search 128; recall@100 against exact knn;
- pq: `IVF{4 sqrt N},{--pq}` (default PQ64) trained on the first 30,000 rows, `--nprobe` 32, exact re-scoring of
  the top `--rescore` 1000 from the memory-mapped vectors; `pq64` (when --pq is not PQ64) and `sq8` (8-bit scalar
  codes, 4x smaller than float32) the same with those codes, printed beside it with no fixed key;
- drh: drh-lite0 with an LSH coding (1024 bits; the learned DRH layer needs a long fit and searches the same
  columns) over 40 region codes per image (the global code with 20% of the bits flipped: codes of neighbouring
  windows), gDRH -> gQE -> lDRH (top 400) -> lQE, through `search()` with the precomputed global descriptor.
One thread (OMP/OpenBLAS/MKL_NUM_THREADS = 1 unless set): on this shared 2-core machine two BLAS/OpenMP threads
per query spin against the other users' processes (a 5k-row DRH query: 93 ms with 2 threads, 8 ms with 1).
RSS is the process's resident set (VmRSS) after the family's queries; for ann/pq/sq8 also that of a fresh process
that loads the derived file and runs the same queries (the fixed keys' *_rss_gb: what a server using only that
filter holds, without the pages the exact scan touched here); disk is the index folder's bytes per image.
The LAST line holds the issue's fixed keys (nan where a family was skipped).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # see the docstring: one thread per query

import numpy as np  # noqa: E402  (after the thread settings)

from instar import Index, search  # noqa: E402
from instar.search import ann  # noqa: E402
from instar.index.records import Described  # noqa: E402
from instar.presets import load_preset  # noqa: E402
from instar.store.columns import ASMK_CODES, BOXES, CODES, GLOBAL, REGION_CODES  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "mini-rparis6k" / "jpg"
K = 100


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load() -> str:
    return os.getloadavg().__repr__()


def real_descriptors(work: Path, n: int) -> tuple[np.ndarray, list[Path]]:
    """gem-lite0 descriptors of the first n shared photos (cached in `work`)."""
    photos = sorted(PHOTOS.glob("*.jpg"))[:n]
    cache = work / f"real-{n}.npy"
    if cache.exists():
        return np.load(cache), photos
    tmp = work / "describe.index"
    shutil.rmtree(tmp, ignore_errors=True)
    index = Index.create(tmp, load_preset("gem-lite0"))
    vectors = np.stack([index.describe_file(p).data[GLOBAL] for p in photos])
    index.close()
    shutil.rmtree(tmp)
    np.save(cache, vectors)
    return vectors, photos


class Mixtures:
    """Synthetic rows resembling the real descriptors (see the module docstring)."""

    def __init__(self, real: np.ndarray, seed: int = 0):
        self.real, self.scale = real.astype(np.float64), 0.5 * real.std(axis=0)
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> np.ndarray:
        pick = self.rng.integers(0, len(self.real), size=(n, 3))
        w = self.rng.dirichlet([0.3, 0.3, 0.3], size=n)
        v = np.einsum("nj,njd->nd", w, self.real[pick]) + np.abs(self.rng.normal(size=(n, self.real.shape[1]))) * self.scale
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fill(index: Index, n: int, real: np.ndarray, extra=None, batch: int = 2000) -> float:
    """N synthetic rows through the public API; seconds taken."""
    gen = Mixtures(real)
    t = time.perf_counter()
    for lo in range(0, n, batch):
        vectors = gen.batch(min(batch, n - lo))
        more = [{}] * len(vectors) if extra is None else extra(vectors, gen.rng)
        items = []
        for i, v in enumerate(vectors):
            data = {GLOBAL: v, **more[i]}
            items.append(Described(f"syn/{lo + i}.jpg", f"{lo + i}.jpg", 1024, 768, f"s{lo + i}", data))
        index.add_descriptions(items, batch_size=batch)
        print(f"  stored {lo + len(vectors)}/{n} ({time.perf_counter() - t:.0f} s)", flush=True)
    return time.perf_counter() - t


def timed(fn, queries) -> tuple[list, list[float]]:
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append((time.perf_counter() - t) * 1000)
    return out, times


def p(times: list[float], q: float) -> float:
    return float(np.percentile(times, q))


def recall(approx: list, exact: list) -> float:
    return statistics.mean(len({h.row for h in a} & {h.row for h in e}) / max(len(e), 1)
                           for a, e in zip(approx, exact))


def fresh_process_query(path: Path, vector, overrides: dict, work: Path) -> float:
    """Seconds a new Python process takes from `Index.open` to its first search's hits (imports not counted);
    `vector`: a descriptor or a query photo's path."""
    if isinstance(vector, Path):
        query = repr(str(vector))
    else:
        np.save(work / "q.npy", vector)
        query = f"np.load({str(work / 'q.npy')!r})"
    code = ("import sys,time,json,numpy as np; sys.path.insert(0, %r); from instar import Index, search; "
            "t=time.perf_counter(); i=Index.open(%r); search(i, %s, k=100, overrides=json.loads(%r)); "
            "print(time.perf_counter()-t)") % (str(ROOT), str(path), query, json.dumps(overrides))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def fresh_process_searches(path: Path, queries: np.ndarray, overrides: dict, work: Path) -> tuple[float, ...]:
    """A new Python process opens the index and runs every query once through `search()` (the derived index loaded
    from disk, not built): (p50 ms, resident GB after the queries, peak resident GB, of the resident the anonymous
    part GB: what is not file pages the kernel may drop) -- what a server holding only this filter keeps in memory,
    without the pages another family (the exact scan) touched in this process."""
    np.save(work / "queries.npy", queries)
    code = ("import sys,time,json,numpy as np; sys.path.insert(0, %r); from instar import Index, search; "
            "i=Index.open(%r); qs=np.load(%r); o=json.loads(%r); search(i, qs[0], k=100, overrides=o); t=[]\n"
            "for q in qs:\n t0=time.perf_counter(); search(i, q, k=100, overrides=o); t.append(time.perf_counter()-t0)\n"
            "s={l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(('VmRSS','VmHWM','RssAnon'))}\n"
            "print(1000*float(np.median(t)), s['VmRSS']/2**20, s['VmHWM']/2**20, s['RssAnon']/2**20)") % (
        str(ROOT), str(path), str(work / "queries.npy"), json.dumps(overrides))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return tuple(map(float, out.stdout.strip().splitlines()[-1].split()))


def http_times(path: Path, photos: list[Path], overrides: dict, work: Path) -> list[float]:
    """Client-side ms per POST /search (image upload, so the trunk's forward is included) through `instar serve`."""
    import httpx
    port = 8700 + os.getpid() % 200
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "instar.cli", "serve", str(path), "--port", str(port),
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        sets = [f"{k}={v}" for k, v in overrides.items()]
        times = []
        for photo in photos:
            t = time.perf_counter()
            r = httpx.post(url + "/search", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                           data={"k": str(K), "set": sets}, timeout=300)
            r.raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
        return times
    finally:
        proc.terminate()
        proc.wait()
        log.close()


def global_family(args, work: Path, real: np.ndarray, photos: list[Path], out: dict) -> None:
    n = args.n
    path = work / f"gem-{n}.index"
    shutil.rmtree(path, ignore_errors=True)
    index = Index.create(path, load_preset("gem-lite0"))
    build = fill(index, n, real)
    print(f"gem-lite0 index of {n}: built in {build:.0f} s, {disk_bytes(path) / n:.0f} bytes/image, load {load()}")
    queries = list(real[:args.queries])
    exact, t_knn = timed(lambda q: search(index, q, k=K), queries)
    out["knn_ms"] = p(t_knn, 50)
    print(f"knn    p50 {p(t_knn, 50):8.1f} ms  p99 {p(t_knn, 99):8.1f} ms  rss {rss_gb():.2f} GB  load {load()}")
    nlist = args.nlist or 1 << int(round(math.log2(4 * math.sqrt(n))))
    for key, settings in (("ann", {"filter.method": "ann", "filter.index": "HNSW32", "filter.ef_search": "128"}),
                          ("pq", {"filter.method": "ann", "filter.index": f"IVF{nlist},{args.pq}", "filter.nprobe":
                                  str(args.nprobe), "filter.rescore": str(args.rescore), "filter.train": "30000"}),
                          ("pq64", {"filter.method": "ann", "filter.index": f"IVF{nlist},PQ64", "filter.nprobe":
                                    str(args.nprobe), "filter.rescore": str(args.rescore), "filter.train": "30000"}),
                          ("sq8", {"filter.method": "ann", "filter.index": f"IVF{nlist},SQ8", "filter.nprobe":
                                   str(args.nprobe), "filter.rescore": str(args.rescore), "filter.train": "30000"})):
        if key == "pq64" and args.pq == "PQ64":
            continue
        if key in args.skip:
            continue
        t = time.perf_counter()
        search(index, queries[0], k=K, overrides=settings)  # builds (or loads) the derived index
        first = time.perf_counter() - t
        got, times = timed(lambda q: search(index, q, k=K, overrides=settings), queries)
        fresh_ms, fresh_rss, fresh_peak, fresh_anon = fresh_process_searches(path, np.stack(queries), settings, work)
        if key not in ("sq8", "pq64"):  # printed beside pq, no fixed key
            out[f"{key}_ms"], out[f"{key}_recall100"], out[f"{key}_rss_gb"] = p(times, 50), recall(got, exact), fresh_rss
        slug = "".join(c if c.isalnum() else "_" for c in settings["filter.index"])
        derived = sum(f.stat().st_size for f in (path / "derived").glob(f"ann.{slug}.*"))
        print(f"{key:6} p50 {p(times, 50):8.1f} ms  p99 {p(times, 99):8.1f} ms  recall@100 {recall(got, exact):.3f}  "
              f"build {first:.0f} s  derived file {derived / 2**20:.0f} MiB  rss {rss_gb():.2f} GB (this process, "
              f"exact scan's pages included)  [{settings['filter.index']} rescore {settings.get('filter.rescore', 0)}]"
              f"  load {load()}")
        print(f"{key:6} in a fresh process (derived file loaded, only this filter's pages): p50 {fresh_ms:.1f} ms  "
              f"resident {fresh_rss:.2f} GB (anonymous {fresh_anon:.2f})  peak {fresh_peak:.2f} GB", flush=True)
        if "http" not in args.skip and key == "ann":
            ht = http_times(path, photos[:args.http], settings, work)
            print(f"{key:6} over HTTP with a photo (trunk included): p50 {p(ht, 50):.0f} ms  p99 {p(ht, 99):.0f} ms")
    if "http" not in args.skip:
        ht = http_times(path, photos[:args.http], {}, work)
        print(f"knn    over HTTP with a photo (trunk included): p50 {p(ht, 50):.0f} ms  p99 {p(ht, 99):.0f} ms")
    first = fresh_process_query(path, queries[0], {}, work)
    print(f"knn    first query of a fresh process (open + search): {first:.2f} s")
    index.remove([f"{i}.jpg" for i in range(0, n, 100)])
    after, t_after = timed(lambda q: search(index, q, k=K), queries)
    removed = {int(h.row) for r in after for h in r} & set(range(0, n, 100))
    assert not removed, "a removed row was returned"
    out["removed_ratio"] = p(t_after, 50) / p(t_knn, 50)
    print(f"knn after 1% removed: p50 {p(t_after, 50):8.1f} ms ({out['removed_ratio']:.2f}x)  load {load()}")
    if "ann" not in args.skip:
        settings = {"filter.method": "ann", "filter.index": "HNSW32", "filter.ef_search": "128"}
        _, t = timed(lambda q: search(index, q, k=K, overrides=settings), queries)
        print(f"ann after 1% removed: p50 {p(t, 50):8.1f} ms ({p(t, 50) / out['ann_ms']:.2f}x)")
    index.close()
    ann.clear_cache()  # the derived ANN indexes of this family (HNSW: several GB) are not needed by the next ones
    if not args.keep:
        shutil.rmtree(path)


def drh_family(args, work: Path, real: np.ndarray, photos: list[Path], out: dict) -> None:
    n = args.n
    path = work / f"drh-{n}.index"
    shutil.rmtree(path, ignore_errors=True)
    preset = load_preset("drh-lite0").with_overrides({"coding.method": "lsh", "coding.keep_float_regions": "false",
                                                       "train.max_images": "8"})
    index = Index.create(path, preset, photos[:8])
    coding = index.extractor.coding
    bits = coding.bits
    boxes = np.tile(np.array([0, 0, 512, 384], np.float32), (40, 1))

    def extra(vectors, rng):
        codes = coding.codes(vectors)
        flips = rng.random((len(vectors), 40, bits), dtype=np.float32) < 0.2
        regions = np.packbits(np.unpackbits(codes, axis=1)[:, None, :] ^ flips, axis=2)
        return [{CODES: c, BOXES: boxes, REGION_CODES: r} for c, r in zip(codes, regions)]
    build = fill(index, n, real, extra, batch=1000)
    print(f"drh (lsh 1024 bits) index of {n}: built in {build:.0f} s, {disk_bytes(path) / n:.0f} bytes/image")
    queries = list(real[:args.queries])
    _, t_knn = timed(lambda q: search(index, q, k=K, overrides={"filter.method": "knn", "rerank.method": "none",
                                                                 "expansion.method": "none"}), queries)
    hits, t = timed(lambda q: search(index, q, k=K), queries)
    out["drh_ms"], out["drh_vs_knn"] = p(t, 50), p(t_knn, 50) / p(t, 50)
    print(f"drh    p50 {p(t, 50):8.1f} ms  p99 {p(t, 99):8.1f} ms  (exact float knn on the same index "
          f"{p(t_knn, 50):.1f} ms: {out['drh_vs_knn']:.1f}x)  rss {rss_gb():.2f} GB  load {load()}")
    index.close()
    if not args.keep:
        shutil.rmtree(path)


def asmk_family(args, work: Path, photos: list[Path], out: dict) -> None:
    """ASMK* (asmk-rootsift, binary residuals, 1024 words) over rows copied from real photos' descriptions with 15%
    of each residual's bits flipped (words, gamma and sizes as the photo's); queries are real photos."""
    n = min(args.n, args.asmk_n)
    print(f"asmk* family on {n} rows (--asmk-n {args.asmk_n})", flush=True)
    path = work / f"asmk-{n}.index"
    shutil.rmtree(path, ignore_errors=True)
    preset = load_preset("asmk-rootsift").with_overrides({"pooling.binary": "true", "train.max_images": "8"})
    index = Index.create(path, preset, photos[:8])
    real = [index.describe_file(ph).data for ph in photos[:args.asmk_real]]
    gen = np.random.default_rng(1)
    t = time.perf_counter()
    for lo in range(0, n, 1000):
        items = []
        for i in range(lo, min(n, lo + 1000)):
            base = real[i % len(real)]
            data = dict(base)
            flips = (gen.random(base[ASMK_CODES].shape + (8,)) < 0.15)
            data[ASMK_CODES] = base[ASMK_CODES] ^ np.packbits(flips, axis=-1)[..., 0]
            v = base[GLOBAL] + 0.05 * gen.normal(size=base[GLOBAL].shape).astype(np.float32)
            data[GLOBAL] = (v / np.linalg.norm(v)).astype(np.float32)
            items.append(Described(f"syn/{i}.jpg", f"{i}.jpg", 1024, 768, f"s{i}", data))
        index.add_descriptions(items, batch_size=1000)
    build = time.perf_counter() - t
    print(f"asmk* index of {n}: built in {build:.0f} s, {disk_bytes(path) / n:.0f} bytes/image")
    queries = photos[args.asmk_real:args.asmk_real + args.http]
    first = fresh_process_query(path, queries[0], {}, work)   # builds the inverted file, saves it as derived data
    again = fresh_process_query(path, queries[1], {}, work)   # a fresh process that finds it on disk
    _, times = timed(lambda q: search(index, q, k=K), queries)
    out["asmk_first_query_s"], out["asmk_ms"] = again, p(times[1:], 50)
    print(f"asmk*  first query of a fresh process: {first:.2f} s (no derived file yet), {again:.2f} s (derived file "
          f"present); later queries p50 {p(times[1:], 50):.0f} ms (query image's RootSIFT included)  load {load()}")
    index.close()
    if not args.keep:
        shutil.rmtree(path)


def hamming_family(args, work: Path, real: np.ndarray, out: dict) -> None:
    """Sub-linear gDRH: the `hamming-ivf` filter (faiss BIVF, nlist 4 sqrt N) against the exact `hamming` filter,
    recall@400 and p50 per code length; codes are LSH (random hyperplanes through the mean) of the synthetic rows,
    stored in a store of their own (the filters read only the `codes` column); queries: the real descriptors' codes."""
    from instar.search import Database, Query
    from instar.search.filter.hamming import GlobalRegionHashingSearch
    from instar.search.filter.hamming_ivf import HammingIVFSearch
    from instar.store import Column, Store, connect
    n = args.n
    gen = Mixtures(real, seed=2)
    vectors = np.concatenate([gen.batch(min(20000, n - lo)) for lo in range(0, n, 20000)])
    mean = vectors.mean(axis=0)
    nlist = 1 << int(round(math.log2(4 * math.sqrt(n))))
    for bits in (128, 256, 512, 1024):
        planes = np.random.default_rng(bits).standard_normal((vectors.shape[1], bits)).astype(np.float32)
        codes = np.packbits((vectors - mean) @ planes >= 0, axis=1)
        qcodes = np.packbits((real[:args.queries] - mean) @ planes >= 0, axis=1)
        path = work / f"codes-{bits}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        db = connect(path / "s.sqlite", create=True)
        Store.initialise(path, db, (Column("global", "float32", (1,)), Column(CODES, "uint8", (bits // 8,))))
        store = Store(path, db)
        with store.writer() as w:
            for lo in range(0, n, 20000):
                w.append([(f"k{i}", {"global": np.ones(1, np.float32), CODES: codes[i]})
                          for i in range(lo, min(n, lo + 20000))])
        snap = store.snapshot()
        database = Database(np.arange(n), snap.column("global"), snapshot=snap)
        exact_stage = GlobalRegionHashingSearch()

        def query(c):
            q = Query(vector=np.ones(1, np.float32))
            q.cached(CODES, lambda: c)
            return q
        exact, t_exact = timed(lambda c: exact_stage(database, query(c), 400), qcodes)
        line = f"hamming {bits:4} bits: exact p50 {p(t_exact, 50):6.1f} ms"
        for nprobe in (8, 32):
            stage = HammingIVFSearch(index=f"BIVF{nlist}", nprobe=nprobe, train=min(n, 100000))
            stage(database, query(qcodes[0]), 400)  # trains and fills the binary IVF
            got, t = timed(lambda c: stage(database, query(c), 400), qcodes)
            r = statistics.mean(len(set(a.positions.tolist()) & set(e.positions.tolist())) / len(e)
                                for a, e in zip(got, exact))
            line += f" | BIVF{nlist} nprobe {nprobe}: p50 {p(t, 50):6.1f} ms recall@400 {r:.3f}"
        print(line + f"  load {load()}", flush=True)
        db.close()
        shutil.rmtree(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--real", type=int, default=40)
    ap.add_argument("--http", type=int, default=10, help="photos sent over HTTP (and ASMK* query photos)")
    ap.add_argument("--asmk-real", type=int, default=20, help="photos whose ASMK* descriptions seed the rows")
    ap.add_argument("--asmk-n", type=int, default=200_000,
                    help="rows of the ASMK* index (at most --n): its inverted file is built in memory, ~600 entries "
                         "of 20 bytes per row plus their sort, so 1M rows (12+ GB, twice that while sorting) do not "
                         "fit a 24 GB machine beside the other families; the value used is printed")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "scale")
    ap.add_argument("--skip", default="", help="comma-separated: global,ann,pq,sq8,drh,hamming,asmk,http")
    ap.add_argument("--keep", action="store_true", help="keep the indexes")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists of the pq family (default 4 sqrt N, a power of 2)")
    ap.add_argument("--pq", default="PQ64", help="the codes of the pq key's IVF index (faiss factory suffix); PQ64 and "
                    "SQ8 are printed beside it")
    ap.add_argument("--nprobe", type=int, default=32, help="IVF lists visited (pq, pq64, sq8)")
    ap.add_argument("--rescore", type=int, default=1000, help="candidates re-scored exactly (pq, pq64, sq8)")
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"N = {args.n}; machine load {load()}; {os.cpu_count()} cores")
    real, photos = real_descriptors(args.work, args.real)
    out = {k: float("nan") for k in ("knn_ms", "ann_ms", "ann_recall100", "ann_rss_gb", "pq_ms", "pq_recall100",
                                      "pq_rss_gb", "removed_ratio", "drh_ms", "drh_vs_knn", "asmk_first_query_s",
                                      "asmk_ms")}
    if "global" not in args.skip:
        global_family(args, args.work, real, photos, out)
    if "drh" not in args.skip:
        drh_family(args, args.work, real, photos, out)
    if "hamming" not in args.skip:
        hamming_family(args, args.work, real, out)
    if "asmk" not in args.skip:
        asmk_family(args, args.work, photos, out)
    print(f"machine load at the end {load()}")
    print(f"n={args.n} " + " ".join(f"{k}={v:.3g}" for k, v in out.items()))


if __name__ == "__main__":
    main()
