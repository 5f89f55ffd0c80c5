"""Evaluate a preset on a benchmark: index the database, describe the (cropped) queries, rank, score."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.boxes import paired_iou
from ..core.progress import Progress, no_progress
from ..extract.images import list_images
from ..index import Index, IndexError_
from ..index.shards import SUFFIX, create_shards
from ..presets import DEFAULT_PRESET, Preset, load_preset
from ..search import Searcher, ShardedIndex
from .datasets import Dataset, Report, load_dataset

# Localisation is measured over the correct hits among the first LOCALISE_TOP of each query's ranking.
LOCALISE_TOP = 10


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
    search: str = ""                  # the search stages used, e.g. "filter knn, rerank ca-sr(top=100), expansion aqe(top=5)"
    localisation: dict | None = None  # {'mean_iou', 'iou50', 'hits'} over correct top-10 hits with a known box

    def table(self) -> str:
        head = (f"{self.dataset} | preset {self.preset.name} | {self.search} | "
                f"learned stages trained on {self.trained_on}")
        lines = [head, *self.notes, self.report.table()]
        if self.localisation is not None:
            loc = self.localisation
            lines.append(f"localisation (correct hits in the top {LOCALISE_TOP} with a known box: {loc['hits']}): "
                         f"mean IoU {100 * loc['mean_iou']:.2f}, IoU >= 0.5 {100 * loc['iou50']:.2f}%")
        return "\n".join(lines)

    @property
    def metrics(self) -> dict:
        """The report's metrics plus, when measured, `localisation` (fractions)."""
        out = dict(self.report.metrics)
        if self.localisation is not None:
            out["localisation"] = {k: self.localisation[k] for k in ("mean_iou", "iou50", "hits")}
        return out


def describe_search(preset: Preset) -> str:
    """The search stages of a preset in one line, e.g. 'filter knn, rerank ca-sr(top=100), expansion aqe(top=5)'."""
    parts = []
    for section in ("filter", "rerank", "expansion"):
        values = dict(preset[section])
        method = values.pop("method")
        args = ", ".join(f"{k}={v}" for k, v in values.items())
        parts.append(f"{section} {method}" + (f"({args})" if args and method != "none" else ""))
    return ", ".join(parts)


def evaluate(dataset: str | Dataset, preset: str | Path | Preset | None = None, *, data: Path | str | None = None,
             gnd: Path | str | None = None, images: Path | str | None = None, train: Path | str | Sequence[Path] | None = None,
             workdir: Path | str | None = None, overrides: dict[str, Any] | None = None, expansion: str | None = None,
             weights_mirror: str | None = None, shards: int | None = None, progress: Progress = no_progress) -> Evaluation:
    """Run the full protocol of `dataset` with `preset`.

    `train` (a folder or a list of image files) is the separate set the preset's codebook/whitening are
    learned on; without it they are learned on the evaluated database itself, which the result states.
    `workdir` keeps the index between runs (resumable, and reused when the preset is unchanged). `shards`: build
    the index as that many shards of one model (`instar.index.shards`, each image in the shard owning its name)
    and search them as one; the rankings, hence the metrics, equal those of one index.
    """
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data=data, gnd=gnd, images=images)
    p = preset if isinstance(preset, Preset) else load_preset(DEFAULT_PRESET if preset is None else preset)
    if overrides:
        p = p.with_overrides(overrides)
    if train is None:
        train_paths, trained_on = list(ds.database), f"the evaluated database itself ({ds.name}, not a separate set)"
    elif isinstance(train, (str, Path)):
        train_paths, trained_on = list_images(train), f"{train}"
    else:
        train_paths, trained_on = [Path(t) for t in train], f"{len(train)} given images"
    if not p.needs_training:
        trained_on = "nothing (no stage of this preset is learned)"
    timings: dict[str, float] = {}
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="instar-eval-")
        workdir = tmp.name
    index_path = Path(workdir) / (f"{ds.name}.{p.name}.index" if shards is None else f"{ds.name}.{p.name}.{shards}{SUFFIX}")
    try:
        t0 = time.perf_counter()
        if index_path.exists():
            index = (Index.open(index_path, weights_mirror=weights_mirror) if shards is None
                     else ShardedIndex.open(index_path, weights_mirror=weights_mirror))
            if index.preset.extraction_toml() != p.extraction_toml():
                index.close()
                raise IndexError_(f"{index_path}: holds another configuration of preset {p.name!r}; "
                                  "use another --workdir or remove it")
            trained_on = index.meta("trained_on") or trained_on
        elif shards is not None:
            create_shards(index_path, p, train_paths if p.needs_training else (), shards, trained_on=trained_on,
                          progress=progress, weights_mirror=weights_mirror)
            index = ShardedIndex.open(index_path, weights_mirror=weights_mirror)
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
            searcher = Searcher(index, preset=p, expansion=expansion)
            db, pipeline = searcher.db, searcher.pipeline
            index_of_row = {row_of_path[resolved[i]]: int(i) for i in present}
            db_index = np.array([index_of_row.get(int(r), -1) for r in db.rows], dtype=np.int64)
            sizes = {r.row: (r.width, r.height) for r in index.records()}
            gt_boxes = getattr(ds, "positive_boxes", None)
            ious: list[float] = []
            rankings = []
            t0 = time.perf_counter()
            for qi, q in enumerate(progress(ds.queries, desc="queries")):
                ranking = searcher.rank(searcher.query(q.image, q.box), max(len(db), 1), localise=LOCALISE_TOP)
                keep = db_index[ranking.positions] >= 0
                rankings.append(db_index[ranking.positions][keep])
                if gt_boxes is not None and gt_boxes[qi]:
                    for j in range(min(LOCALISE_TOP, len(ranking))):
                        di = int(db_index[ranking.positions[j]])
                        if di in gt_boxes[qi]:
                            box = None if ranking.boxes is None else ranking.boxes[j]
                            if box is None or not np.all(np.isfinite(box)):
                                w, h = sizes[int(db.rows[ranking.positions[j]])]
                                box = np.array([0, 0, w, h], np.float32)
                            ious.append(float(paired_iou(box, np.asarray(gt_boxes[qi][di]))[0]))
            timings["queries+search"] = time.perf_counter() - t0
            ranks = np.stack(rankings) if rankings else np.zeros((0, len(present)), np.int64)
            exp = pipeline.preset["expansion"]["method"]
            localisation = None
            if gt_boxes is not None:
                arr = np.asarray(ious, dtype=np.float64)
                localisation = {"mean_iou": float(arr.mean()) if len(arr) else float("nan"),
                                "iou50": float((arr >= 0.5).mean()) if len(arr) else float("nan"), "hits": len(arr)}
        return Evaluation(report=ds.evaluate(ranks), preset=p, dataset=ds.name, index_path=str(index_path),
                          trained_on=trained_on, expansion=exp, seconds=timings, ranks=ranks, notes=notes,
                          search=describe_search(pipeline.preset), localisation=localisation)
    finally:
        if tmp is not None:
            tmp.cleanup()
