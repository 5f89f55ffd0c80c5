"""Load test of `instar serve` on loopback: N concurrent clients (1, 4, 16) searching a 10,000-image index while
another client adds images, then a check that the index equals a sequential build.

    .venv/bin/python benchmarks/load_test.py [--images 10000] [--levels 1,4,16] [--requests 120,240,480]

What it does, bounded in requests and time (each level stops at its request count or --level-seconds):
1. builds an index with the fast default preset (rootsift-vlad, 8-word codebook: 1024-d) learned on 8 small
   real photographs, then fills it with --images synthetic rows through the store API directly (random unit
   vectors in the global column; image records are symlinks to the 8 photos, so /images works);
2. starts `instar serve` on 127.0.0.1 (a subprocess; the clients are one asyncio process with httpx);
3. for each level N: N clients POST /search (an uploaded real photo, k=20) as fast as answers come back, while
   one more client POSTs /images (2 new photos per request, with the bearer token) through the level;
4. reports throughput, p50/p99 latency per level, add latency, and the server's peak RSS (VmHWM);
5. checks that no request failed, and that the index afterwards equals a sequential build: a copy of the
   index taken before the server started, given the same files with `Index.add` one batch, must hold the same
   live rows (key -> SHA-256 and descriptor bytes), the same row count (nothing stored twice) and verify clean.
The last line is the summary; the exit status is 1 if a check failed.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageOps

from instar import Index, list_images
from instar.store.columns import GLOBAL
from instar.presets import load_preset

FAST = {"pooling.k": "8", "features.max_keypoints": "300", "image.max_size": "256"}
SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
           "stereo_motorcycle", "retina")
TOKEN = "load-test-token"
K = 20


def make_photos(folder: Path) -> list[Path]:
    from skimage import data
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SOURCES:
        a = getattr(data, name)()
        a = a[0] if isinstance(a, tuple) else a
        im = Image.fromarray(a[..., :3] if a.ndim == 3 else a).convert("RGB")
        im.thumbnail((256, 256))
        im.save(folder / f"{name}.jpg", quality=92)
        out.append(folder / f"{name}.jpg")
    return out


def new_photos(photos: list[Path], n: int) -> list[bytes]:
    """n photographs not in the index: mirrored crops of the sources, distinct bytes each."""
    out = []
    for i in range(n):
        im = ImageOps.mirror(Image.open(photos[i % len(photos)]).convert("RGB"))
        w, h = im.size
        im = im.crop((i % 11, (i // 11) % 7, w - (i % 5), h - (i % 3)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def build_index(path: Path, photos: list[Path], n: int, seed: int = 0) -> None:
    """The learned model from the real photos, then n synthetic rows written through the store directly."""
    with Index.create(path, load_preset("rootsift-vlad").with_overrides(FAST), train=photos) as idx:
        dim = int(FAST["pooling.k"]) * 128
        rng = np.random.default_rng(seed)
        links = path.parent / "synthetic"
        links.mkdir()
        sizes = [Image.open(p).size for p in photos]
        digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]
        with idx.store.writer() as w:
            for start in range(0, n, 1000):
                count = min(1000, n - start)
                vectors = rng.standard_normal((count, dim)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                items, records = [], []
                for j in range(count):
                    i = start + j
                    link = links / f"{i:05d}.jpg"
                    link.symlink_to(photos[i % len(photos)])
                    items.append((str(link), {GLOBAL: vectors[j]}))
                    records.append((str(link), f"synthetic/{i:05d}.jpg", *sizes[i % len(photos)], digests[i % len(photos)]))

                def write_images(db, appended, records=records):
                    now = time.time()
                    db.executemany("INSERT INTO images (row, path, name, width, height, sha256, added_at) "
                                   "VALUES (?, ?, ?, ?, ?, ?, ?)", [(a.row, *rec, now) for a, rec in zip(appended, records)])

                w.append(items, on_commit=write_images)
        assert len(idx) == n


def contents(path: Path) -> tuple[dict[str, tuple[str, bytes]], int, list]:
    """name -> (sha256, descriptor bytes) of every live image, the committed row count, and verify()'s damage."""
    with Index.open(path) as idx:
        snap = idx.snapshot()
        vectors = snap.column(GLOBAL)
        live = {r.name: (r.sha256, np.asarray(vectors[r.row]).tobytes()) for r in idx.records()}
        return live, snap.n_rows, idx.verify()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run_level(url: str, clients: int, requests: int, seconds: float, queries: list[bytes],
                    adds: list[bytes]) -> dict:
    latencies, failures, added = [], [], []
    add_latencies = []
    issued = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        async def searcher(c: int) -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                q = queries[(issued + c) % len(queries)]
                t = time.perf_counter()
                try:
                    r = await http.post("/search", files={"image": ("q.jpg", q, "image/jpeg")}, data={"k": str(K)})
                except httpx.HTTPError as e:
                    failures.append(f"search: {type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    failures.append(f"search: HTTP {r.status_code}: {r.text[:200]}")
                elif len(r.json()["hits"]) != K:
                    failures.append(f"search: {len(r.json()['hits'])} hits, expected {K}")

        async def adder() -> None:
            for i in range(0, len(adds), 2):
                if time.perf_counter() > deadline:
                    failures.append(f"add: level ended before {len(adds) - i} images were sent")
                    return
                batch = adds[i:i + 2]
                files = [("files", (f"new{i + j}.jpg", b, "image/jpeg")) for j, b in enumerate(batch)]
                t = time.perf_counter()
                try:
                    r = await http.post("/images", files=files, headers={"Authorization": f"Bearer {TOKEN}"})
                except httpx.HTTPError as e:
                    failures.append(f"add: {type(e).__name__}: {e}")
                    continue
                add_latencies.append(time.perf_counter() - t)
                if r.status_code != 200 or r.json()["added"] != len(batch):
                    failures.append(f"add: HTTP {r.status_code}: {r.text[:300]}")
                else:
                    added.extend(f["name"] for f in r.json()["files"])
                await asyncio.sleep(0.05)

        started = time.perf_counter()
        await asyncio.gather(adder(), *(searcher(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "elapsed": elapsed, "failures": failures,
            "throughput": len(latencies) / elapsed, "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000, "adds": len(added), "added": added,
            "add_p50": percentile(add_latencies, 50) * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000, help="synthetic rows in the index")
    ap.add_argument("--levels", default="1,4,16", help="concurrent searching clients, per level")
    ap.add_argument("--requests", default="120,240,480", help="searches per level (bound)")
    ap.add_argument("--adds", type=int, default=16, help="new photos added during each level")
    ap.add_argument("--level-seconds", type=float, default=90, help="time bound per level")
    ap.add_argument("--workdir", type=Path, help="keep the indexes here (default: a temporary folder)")
    ap.add_argument("--workers", type=int, help="the server's search threads (default: its own)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    requests = [int(x) for x in args.requests.split(",")]
    if len(requests) != len(levels):
        ap.error("--requests needs one count per level")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="instar-load-"))
    work.mkdir(parents=True, exist_ok=True)
    index, base = work / "served.index", work / "base.index"
    if index.exists() or base.exists():
        ap.error(f"{work}: holds an earlier run's indexes; give an empty --workdir")

    t = time.perf_counter()
    photos = make_photos(work / "photos")
    build_index(base, photos, args.images)
    shutil.copytree(base, index, symlinks=True)
    print(f"built a {args.images}-image index (1024-d rows) in {time.perf_counter() - t:.1f} s: {index}", flush=True)
    queries = [p.read_bytes() for p in photos]
    adds = new_photos(photos, args.adds * len(levels))

    port = free_port()
    log = open(work / "server.log", "w")
    cmd = [sys.executable, "-m", "instar.cli", "serve", str(index), "--port", str(port), "--log-level", "warning"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "INSTAR_TOKEN": TOKEN})
    url = f"http://127.0.0.1:{port}"
    results, added = [], []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{(work / 'server.log').read_text()}")
            time.sleep(0.2)
        stats = httpx.get(url + "/stats").json()
        print(f"server pid {server.pid}: {stats['images']} images, {stats['workers']} search threads x "
              f"{stats['torch_threads']} torch threads, RSS after start {peak_rss_mb(server.pid):.0f} MiB", flush=True)
        for i, (clients, n) in enumerate(zip(levels, requests)):
            share = adds[i * args.adds:(i + 1) * args.adds]
            res = asyncio.run(run_level(url, clients, n, args.level_seconds, queries, share))
            results.append(res)
            added += res["added"]
            print(f"  {clients:2d} clients: {res['requests']:4d} searches in {res['elapsed']:5.1f} s = "
                  f"{res['throughput']:6.1f} req/s, p50 {res['p50']:6.1f} ms, p99 {res['p99']:6.1f} ms; "
                  f"{res['adds']} images added meanwhile (p50 {res['add_p50']:.0f} ms per 2), "
                  f"{len(res['failures'])} failed", flush=True)
            for f in res["failures"][:5]:
                print(f"     {f}")
        peak = peak_rss_mb(server.pid)
        final = httpx.get(url + "/stats").json()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()

    # the sequential build: the pre-server copy, given the same files in one add
    reference = work / "sequential.index"
    shutil.copytree(base, reference, symlinks=True)
    (reference / "uploads").mkdir()
    for name in added:
        shutil.copy2(index / "uploads" / name, reference / "uploads" / name)
    with Index.open(reference) as idx:
        report = idx.add(list_images(reference / "uploads"), root=reference / "uploads")
    served_rows, served_n, served_damage = contents(index)
    ref_rows, ref_n, ref_damage = contents(reference)
    problems = [f for r in results for f in r["failures"]]
    if report.added != len(added) or report.failed:
        problems.append(f"sequential build: added {report.added} of {len(added)}, failed {report.failed}")
    if served_rows != ref_rows:
        diff = sorted(set(served_rows) ^ set(ref_rows))[:5] or [k for k in served_rows if served_rows[k] != ref_rows.get(k)][:5]
        problems.append(f"the served index differs from the sequential build (e.g. {diff})")
    if served_n != ref_n or served_n != args.images + len(added):
        problems.append(f"committed rows: served {served_n}, sequential {ref_n}, expected {args.images + len(added)}")
    if served_damage or ref_damage:
        problems.append(f"verify: {served_damage[:3]} {ref_damage[:3]}")
    if final["images"] != args.images + len(added):
        problems.append(f"/stats says {final['images']} images, expected {args.images + len(added)}")

    total = sum(r["requests"] for r in results)
    figures = "; ".join(f"{r['clients']} clients {r['throughput']:.1f} req/s p50 {r['p50']:.0f} ms p99 {r['p99']:.0f} ms"
                        for r in results)
    verdict = "OK" if not problems else "FAILED"
    for p in problems[:10]:
        print(f"problem: {p}")
    print(f"load test {verdict}: {args.images} images + {len(added)} added during the run; {total} searches, "
          f"{len(problems)} failures; {figures}; server peak RSS {peak:.0f} MiB; index equals the sequential build: "
          f"{'yes' if served_rows == ref_rows and served_n == ref_n else 'NO'}")
    if args.workdir is None and not problems:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
