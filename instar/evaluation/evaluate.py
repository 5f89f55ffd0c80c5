"""Evaluate a preset on a benchmark: index the database, describe the (cropped) queries, rank, score."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..extractor import Progress, _no_progress
from ..images import list_images
from ..index import Index, IndexError_
from ..presets import Preset, load_preset
from ..search import search_vectors
from .datasets import Dataset, Report, load_dataset


@dataclass
class Evaluation:
    """What `evaluate` measured, and how: the dataset's report plus the provenance a reader needs."""
    report: Report
    preset: Preset
    dataset: str
    index_path: str
    trained_on: str
    expansion: str
    seconds: dict[str, float] = field(default_factory=dict)
    ranks: np.ndarray | None = None   # (Q, N') database indices, best first (unreadable images left out)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = (f"{self.dataset} | preset {self.preset.name} | query expansion {self.expansion} | "
                f"learned stages trained on {self.trained_on}")
        return "\n".join([head, *self.notes, self.report.table()])


def evaluate(dataset: str | Dataset, preset: str | Path | Preset = "rootsift-vlad", *, data: Path | str | None = None,
             gnd: Path | str | None = None, images: Path | str | None = None, train: Path | str | Sequence[Path] | None = None,
             workdir: Path | str | None = None, overrides: dict[str, Any] | None = None, expansion: str | None = None,
             weights_mirror: str | None = None, progress: Progress = _no_progress) -> Evaluation:
    """Run the full protocol of `dataset` with `preset`.

    `train` (a folder or a list of image files) is the separate set the preset's codebook/whitening are
    learned on; without it they are learned on the evaluated database itself, which the result states.
    `workdir` keeps the index between runs (resumable, and reused when the preset is unchanged).
    """
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data=data, gnd=gnd, images=images)
    p = preset if isinstance(preset, Preset) else load_preset(preset)
    if overrides:
        p = p.with_overrides(overrides)
    if train is None:
        train_paths, trained_on = list(ds.database), f"the evaluated database itself ({ds.name}, not a separate set)"
    elif isinstance(train, (str, Path)):
        train_paths, trained_on = list_images(train), f"{train}"
    else:
        train_paths, trained_on = [Path(t) for t in train], f"{len(train)} given images"
    timings: dict[str, float] = {}
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="instar-eval-")
        workdir = tmp.name
    index_path = Path(workdir) / f"{ds.name}.{p.name}.index"
    try:
        t0 = time.perf_counter()
        if index_path.exists():
            index = Index.open(index_path, weights_mirror=weights_mirror)
            if index.preset.to_toml() != p.to_toml():
                index.close()
                raise IndexError_(f"{index_path}: holds another configuration of preset {p.name!r}; "
                                  "use another --workdir or remove it")
            trained_on = index.meta("trained_on") or trained_on
        else:
            index = Index.create(index_path, p, train_paths if p.needs_training else (), trained_on=trained_on,
                                 progress=progress, weights_mirror=weights_mirror)
        timings["fit"] = time.perf_counter() - t0
        with index:
            t0 = time.perf_counter()
            root = os.path.commonpath([str(Path(d).resolve().parent) for d in ds.database]) if ds.database else None
            index.add(ds.database, root=root, progress=progress)
            timings["index"] = time.perf_counter() - t0
            row_of_path = {r.path: r.row for r in index.records()}
            resolved = [str(Path(pth).resolve()) for pth in ds.database]
            present = np.array([i for i, pth in enumerate(resolved) if pth in row_of_path], dtype=np.int64)
            notes = []
            if len(present) < len(resolved):
                failed = dict(index.failures())
                first = next(pth for pth in resolved if pth not in row_of_path)
                notes.append(f"WARNING: {len(resolved) - len(present)} of {len(resolved)} database images could not be read "
                             f"and are ranked nowhere (first: {first}: {failed.get(first, 'not indexed')})")
            db_rows = np.array([row_of_path[resolved[i]] for i in present], dtype=np.int64)
            stored = index.vectors  # every committed row, removed ones included: keep only the database's rows
            in_order = stored.shape[0] == len(db_rows) and np.array_equal(db_rows, np.arange(len(db_rows)))
            vectors = stored if in_order else np.asarray(stored)[db_rows]
            t0 = time.perf_counter()
            queries = np.stack([index.extractor.describe(q.image, q.box) for q in progress(ds.queries, desc="queries")])
            timings["queries"] = time.perf_counter() - t0
            cfg = index.preset["search"]
            exp = expansion or cfg["expansion"]
            t0 = time.perf_counter()
            _, rows = search_vectors(vectors, queries, len(db_rows), expansion=exp, qe_top=cfg["qe_top"], alpha=cfg["alpha"])
            timings["search"] = time.perf_counter() - t0
            ranks = present[rows]
        return Evaluation(report=ds.evaluate(ranks), preset=p, dataset=ds.name, index_path=str(index_path),
                          trained_on=trained_on, expansion=exp, seconds=timings, ranks=ranks, notes=notes)
    finally:
        if tmp is not None:
            tmp.cleanup()
