"""Describing image files as an index stores them, in this process or in worker processes.

`describe_files(extractor, paths)` is what a worker runs on each batch: load and shrink every file, run the
trunk on same-size images together (`Extractor.features_batch`), and return each file's (width, height,
{column: data}) or the reason it cannot be used. `ParallelDescriber` runs that in worker processes: each holds the fitted extractor (built once, from the preset's TOML and its learned arrays),
decodes, resizes and describes whole batches, at most `2 * workers` batches in flight (a bounded queue), and
its results come back in submission order so the single writer stores rows in the order one process would. A
worker that dies (killed, out of memory) stops the add with BrokenProcessPool; what was committed is kept, and
running the same add again describes only the rest.

Determinism: on CPU, a worker runs torch with `threads` intra-op threads (default: this machine's threads
divided among the workers). A batched forward and a one-image forward give bit-identical maps at the same
thread count with one thread; oneDNN's reduction order depends on the thread count, so descriptors made with
another number of threads per process differ in the last bits (measured: at most 4e-5 in a Lite0 map).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..extract import images as imgs
from ..extract.extractor import Extractor
from ..store.columns import BOXES, GLOBAL, REGIONS
from .records import descriptor_problem


def _columns_of(extractor: Extractor, image, d) -> tuple[int, int, dict[str, np.ndarray]]:
    """(width, height, {column: data}) of one described image; `image` the loaded original, `d` its Description."""
    problem = descriptor_problem(d.vector)
    if problem:
        raise imgs.ImageLoadError(getattr(image, "filename", "") or "image", problem)
    data = {GLOBAL: np.asarray(d.vector, dtype=np.float32)}
    scale = np.array([image.width / d.size[0], image.height / d.size[1]] * 2, dtype=np.float32)
    if extractor.stores_regions:
        data[BOXES] = (d.boxes * scale).astype(np.float32)
    if extractor.stores_region_descriptors:
        data[REGIONS] = np.asarray(d.regions, dtype=np.float32)
    data.update(d.extra)
    for name in extractor.pixel_columns():  # points / boxes of the stages, to original pixels like BOXES
        xy = np.asarray(data[name], dtype=np.float32)
        data[name] = (xy * np.resize(scale, xy.shape[-1])).astype(np.float32)
    return image.width, image.height, data


def describe_file(extractor: Extractor, path: Path) -> tuple[int, int, dict[str, np.ndarray]]:
    """(width, height, {column: data}) of one image file; ImageLoadError if it cannot be used."""
    image = imgs.load_image(path)
    d = extractor.describe_full(imgs.fit_image(image, extractor.preset["image"]["max_size"], path=path))
    try:
        return _columns_of(extractor, image, d)
    except imgs.ImageLoadError as e:
        raise imgs.ImageLoadError(path, e.reason) from None


def describe_files(extractor: Extractor, paths: Sequence[Path]) -> list:
    """Each file's (width, height, {column: data}), or a str saying why it cannot be used (what its ImageLoadError
    says: plain data, so it crosses process boundaries), the trunk batched over same-size images."""
    size = extractor.preset["image"]["max_size"]
    out: list = [None] * len(paths)
    loaded, prepared, where = [], [], []
    for i, p in enumerate(paths):
        try:
            image = imgs.load_image(p)
            prepared.append(imgs.fit_image(image, size, path=p))
        except imgs.ImageLoadError as e:
            out[i] = e.reason
            continue
        loaded.append(image)
        where.append(i)
    views = extractor.features_batch(prepared) if len(prepared) > 1 else [None] * len(prepared)
    for image, small, v, i in zip(loaded, prepared, views, where):
        try:
            out[i] = _columns_of(extractor, image, extractor.describe_full(small, v))
        except imgs.ImageLoadError as e:
            out[i] = e.reason
    return out


class InProcessDescriber:
    """The one-process path: each file described as it comes (on CPU exactly what instar always stored), or on an
    accelerator `batch_size` files at a time with the trunk batched over same-size images."""

    def __init__(self, extractor: Extractor, batch_size: int = 1):
        self.extractor, self.batch_size = extractor, batch_size

    def __enter__(self) -> "InProcessDescriber":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def _one(self, path: Path):
        try:
            return describe_file(self.extractor, path)
        except imgs.ImageLoadError as e:
            return e.reason

    def map(self, items: Iterable, path_of) -> Iterator[tuple[object, object]]:
        if self.batch_size <= 1:
            for item in items:
                path = path_of(item)
                yield item, None if path is None else self._one(Path(path))
            return
        batch: list = []
        for item in items:
            batch.append(item)
            if sum(path_of(it) is not None for it in batch) >= self.batch_size:
                yield from self._flush(batch, path_of)
        yield from self._flush(batch, path_of)

    def _flush(self, batch: list, path_of) -> Iterator[tuple[object, object]]:
        files = [Path(path_of(it)) for it in batch if path_of(it) is not None]
        outcomes = iter(describe_files(self.extractor, files))
        for it in batch:
            yield it, None if path_of(it) is None else next(outcomes)
        batch.clear()


def describer_for(extractor: Extractor, *, workers: int = 0, batch_size: int = 16, device: str = "cpu",
                  threads: int | None = None):
    """The describer `Index.add` runs: in this process (`workers` 0; batched only off the CPU) or in workers."""
    if workers == 0:
        return InProcessDescriber(extractor, batch_size if device != "cpu" else 1)
    return ParallelDescriber(extractor, workers=workers, batch_size=batch_size, device=device, threads=threads)


# --- worker processes ----------------------------------------------------------------------------------------
_WORKER: dict = {}


def default_threads(workers: int) -> int:
    """Torch threads per worker: this machine's cores shared among the workers (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(preset_toml: str, state: dict, device: str, threads: int, weights_mirror: str | None) -> None:
    import torch

    from ..presets import preset_from_toml
    torch.set_num_threads(threads)
    extractor = Extractor(preset_from_toml(preset_toml, source="worker"), weights_mirror=weights_mirror)
    _WORKER["extractor"] = extractor.load_state(state).to_device(device)


def _describe_in_worker(paths: list[str]) -> list:
    return describe_files(_WORKER["extractor"], [Path(p) for p in paths])


class ParallelDescriber:
    """`describe_files` in `workers` processes over batches of `batch_size` files; `map(items)` yields
    (item, outcome) in the order given, items whose `path` is None passing through undescribed."""

    def __init__(self, extractor: Extractor, *, workers: int, batch_size: int, device: str = "cpu",
                 threads: int | None = None):
        if workers < 1:
            raise ValueError(f"workers={workers}: must be at least 1")
        self.batch_size = batch_size
        self.workers = workers
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")  # never fork a process holding torch threads or a CUDA context
        self.pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker,
            initargs=(extractor.preset.to_toml(), extractor.state(), device,
                      default_threads(workers) if threads is None else threads, extractor.weights_mirror))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ParallelDescriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def map(self, items: Iterable, path_of) -> Iterator[tuple[object, object]]:
        """(item, outcome) for each item in order; `path_of(item)` is the file to describe or None (no work, the
        outcome None). At most 2 * workers batches are in flight (the bounded queue); results keep their order."""
        limit = 2 * self.workers
        queue: deque = deque()              # (item, future or None, position in its batch)
        left: dict[Future, int] = {}        # future -> its entries still in the queue
        batch: list = []                    # (item, path or None) of the batch being filled

        def submit() -> None:
            files = [str(p) for _, p in batch if p is not None]
            fut = self.pool.submit(_describe_in_worker, files) if files else None
            k = 0
            for it, p in batch:
                queue.append((it, None if p is None else fut, k))
                k += p is not None
            if fut is not None:
                left[fut] = len(files)
            batch.clear()

        def pop() -> tuple[object, object]:
            it, fut, pos = queue.popleft()
            if fut is None:
                return it, None
            outcome = fut.result()[pos]
            left[fut] -= 1
            if not left[fut]:
                del left[fut]
            return it, outcome

        for item in items:
            batch.append((item, path_of(item)))
            if sum(p is not None for _, p in batch) >= self.batch_size:
                submit()
            while queue and (len(left) >= limit or queue[0][1] is None or queue[0][1].done()):
                yield pop()
        if batch:
            submit()
        while queue:
            yield pop()
