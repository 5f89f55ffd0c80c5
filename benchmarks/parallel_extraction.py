"""Images/s of indexing (describe + store, what `instar index` runs) on one machine: one process as instar always
ran, worker processes (`--workers`), batched forwards (`--batch-size`), and Ray Data with 1 and 2 local
actors, all in the same run on the same images, as ratios to the one process; the bare trunk forward batched
(no decoding, no pooling, no storing) as the ceiling of a CNN preset.

    python benchmarks/parallel_extraction.py [--presets gem-lite0,rootsift-vlad] [--images 24] [--batch 8]

Each mode indexes the same images into a fresh copy of one empty fitted index (so one model), timed from the
start of the add to its last commit: worker start-up (spawn, import, model load) is inside, as a user pays it;
`maxdiff` is the largest difference of a stored global vector from the one-process index (0: bit-identical;
a CNN preset's workers run one torch thread each, the one process all cores, and oneDNN's sums depend on the
thread count); `same_as_workers` says whether Ray's rows are byte-identical to the worker processes'. The
machine's load average (uptime) is printed before and after; the last line holds key=value pairs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from instar import Index
from instar.extract import images as imgs
from instar.extract.extractor import Extractor
from instar.extract.images import list_images
from instar.presets import load_preset
from instar.tools.demo import build_demo


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def rows(index: Index) -> list[tuple]:
    snap = index.snapshot()
    return [(r.name, snap.row_bytes(r.row)) for r in index.records()]


def run_mode(empty: Path, work: Path, name: str, files: list[Path], root: Path, **kw) -> tuple[float, Path]:
    """(images/s of the whole job, the index written)."""
    out = work / f"{name}.index"
    shutil.copytree(empty, out)
    with Index.open(out) as idx:
        t0 = time.perf_counter()
        if "ray" in kw:
            from instar.distributed.ray_index import index_with_ray
            report = index_with_ray(idx, files, root=root, workers=kw["ray"], batch_size=kw.get("batch_size", 1))
        elif "threads" in kw and not kw.get("workers"):  # the one process with fewer torch threads
            before = torch.get_num_threads()
            torch.set_num_threads(kw["threads"])
            try:
                report = idx.add(files, root=root)
            finally:
                torch.set_num_threads(before)
        else:
            report = idx.add(files, root=root, **kw)
        seconds = time.perf_counter() - t0
        assert report.added + len(report.failed) == len(files), (name, report)
    return len(files) / seconds, out


def writer_ceiling(described: Path, empty: Path, work: Path, n: int = 400) -> float:
    """Rows/s the single writer stores (`add_descriptions`, commits of 16, fsync'ed): a described row copied
    under `n` new paths. What bounds a cluster: the driver stores every row itself."""
    from instar.index import Described
    with Index.open(described) as idx:
        snap = idx.snapshot()
        rec = idx.records()[0]
        data = {c: np.asarray(snap.get(c, rec.row)) for c in snap.columns}
    out = work / f"writer-{described.name}"
    shutil.copytree(empty, out)
    items = [Described(f"/synthetic/{i}.jpg", f"{i}.jpg", rec.width, rec.height, f"{i:064x}", data) for i in range(n)]
    with Index.open(out) as idx:
        t0 = time.perf_counter()
        idx.add_descriptions(items, batch_size=16)
        return n / (time.perf_counter() - t0)


def trunk_ceiling(preset, files: list[Path], batch: int) -> float:
    """Images/s of the trunk alone (every scale) on prepared same-size tensors, `batch` images per forward."""
    ex = Extractor(preset)
    model = ex.model
    size = preset["image"]["max_size"]
    small = [imgs.fit_image(imgs.load_image(p), size, path=p) for p in files[:batch]]
    small = [im.resize(small[0].size) for im in small]
    with torch.no_grad():
        ex.features_batch(small[:2])  # warm-up
        t0 = time.perf_counter()
        reps = max(1, 16 // batch)
        for _ in range(reps):
            ex.features_batch(small)
    del model
    return reps * len(small) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="gem-lite0,rootsift-vlad")
    ap.add_argument("--images", type=int, default=24, help="images indexed per mode")
    ap.add_argument("--batch", type=int, default=8, help="--batch-size of the batched modes")
    ap.add_argument("--repeat", type=int, default=1, help="index each image this many times (copies under other "
                    "names): a longer job, where the workers' start-up weighs less")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--modes", default="", help="mode labels to run, separated by ';' (default all), e.g. "
                    "'1 process;--workers 2;ray, 2 actors': a longer job of fewer modes")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"{cores} cores, torch {torch.get_num_threads()} threads in the one process; {load()}")
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        coll = build_demo(tmp / "demo")
        files = list_images(coll / "images")[: args.images]
        if args.repeat > 1:  # copies under other names: other paths, so each is described and stored again
            for i in range(1, args.repeat):
                for p in list(files[: args.images]):
                    copy = p.with_name(f"{p.stem}-copy{i}{p.suffix}")
                    shutil.copyfile(p, copy)
                    files.append(copy)
        train = list_images(coll / "train")[:8]
        if not args.no_ray:
            import ray
            from instar.distributed.ray_index import runtime_env
            ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     runtime_env=runtime_env())
        for name in args.presets.split(","):
            preset = load_preset(name)
            empty = tmp / f"{name}-empty.index"
            Index.create(empty, preset, train).close()
            modes = [("1 process", {}), ("1 process, 1 torch thread", {"threads": 1}),
                     ("--workers 2", {"workers": 2, "batch_size": 1}),
                     (f"--workers 2 --batch-size {args.batch}", {"workers": 2, "batch_size": args.batch}),
                     (f"--workers 1 --batch-size {args.batch}", {"workers": 1, "batch_size": args.batch})]
            if not args.no_ray:
                modes += [("ray, 1 actor", {"ray": 1, "batch_size": 1}), ("ray, 2 actors", {"ray": 2, "batch_size": 1})]
            if args.modes:
                wanted = [m.strip() for m in args.modes.split(";")]
                modes = [m for m in modes if m[0] in wanted]
            print(f"\n{name}: {len(files)} images; {load()}")
            print(f"{'mode':34s} {'images/s':>9s} {'ratio':>7s} {'maxdiff':>9s}")
            results, base, ref = {}, None, None
            for i, (label, kw) in enumerate(modes):
                speed, path = run_mode(empty, tmp, f"{name}-{i}", files, coll / "images", **kw)
                with Index.open(path) as idx:
                    r = rows(idx)
                    vec = np.asarray(idx.vectors)
                if ref is None:
                    ref, base, ref_vec = r, speed, vec
                results[label] = (speed, r)
                diff = float(np.abs(vec - ref_vec).max())
                print(f"{label:34s} {speed:9.2f} {speed / base:6.2f}x {diff:9.2g}")
                key = label.replace(" ", "").replace("-", "").replace(",", "_")
                pairs += [f"{name}.{key}.ips={speed:.3f}", f"{name}.{key}.ratio={speed / base:.3f}",
                          f"{name}.{key}.maxdiff={diff:.2g}"]
            if "ray, 2 actors" in results and "--workers 2" in results:
                same = results["ray, 2 actors"][1] == results["--workers 2"][1]
                overhead = 1 - results["ray, 2 actors"][0] / results["--workers 2"][0]
                print(f"ray rows same as --workers 2: {same}; ray overhead vs --workers 2: {100 * overhead:.1f}%")
                pairs += [f"{name}.ray_same_as_workers={same}", f"{name}.ray_overhead={overhead:.3f}"]
            first = tmp / f"{name}-0.index"
            writer = writer_ceiling(first, empty, tmp)
            print(f"{'single writer (add_descriptions)':34s} {writer:9.2f} {writer / base:6.2f}x")
            pairs.append(f"{name}.writer.ips={writer:.3f}")
            if preset["features"]["type"] == "cnn":
                ceiling = trunk_ceiling(preset, files, args.batch)
                print(f"{'bare trunk forward, batch ' + str(args.batch):34s} {ceiling:9.2f} {ceiling / base:6.2f}x")
                pairs.append(f"{name}.trunk_ceiling.ips={ceiling:.3f}")
    print(f"\n{load()}")
    print(" ".join(pairs + [f"load1={os.getloadavg()[0]:.2f}"]))


if __name__ == "__main__":
    main()
