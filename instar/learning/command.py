"""`instar train`: a training set from a folder or CSV (or an unlabelled folder, grouped by mining), validation,
training with resumable state, and the model and its history written beside `--out`.

Files written for `--out model.pth`:
- `model.pth`: the trunk's checkpoint (its own key layout, every key) + `whiten.weight` / `whiten.shift` + `meta`
  (the recipe, the training set, the per-epoch history): `--weights model.pth --set whitening.method=weights`;
- `model.pth.state`: the resumable training state (kept, so raising `--epochs` continues training);
- `model.history.json`: the per-epoch history (loss, pool loss, train and validation mAP, seconds);
- `model.groups.csv` (`--unlabelled`): the mined groups, one (image, group) row per kept image.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.progress import Progress, no_progress
from ..presets import Preset
from .data import read_labelled, unlabelled_folder, write_groups_csv
from .mining import MAX_KEYPOINTS, SHORTLIST, mine_groups, unwhitened_rmac
from .rmac_net import LearningError
from .train import DatasetValidation, Item, LabelledValidation, TrainConfig, Trainer, save_model


@dataclass
class TrainOutcome:
    """What `train_command` did: the files it wrote, the history, and what it left out."""
    model: Path
    history: list[dict]
    images: int
    objects: int
    problems: list[tuple[Path, str]] = field(default_factory=list)
    mined: dict | None = None
    resumed_from: int | None = None


def state_path_of(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def train_command(data: Path, preset: Preset, out: Path, config: TrainConfig, *, classes: Sequence[str] = (),
                  unlabelled: bool = False, mine_k: int = SHORTLIST, min_inliers: int = 15, max_partners: int = 0,
                  val: Path | None = None, val_dataset: str | None = None, val_data: Path | None = None,
                  cache: Path | None = None, progress: Progress = no_progress,
                  echo: Callable[[str], None] = print, on_update: Callable[[int], None] | None = None) -> TrainOutcome:
    out = Path(out)
    if out.is_dir():
        raise LearningError(f"{out}: is a folder; give the model a file name, e.g. model.pth")
    if not out.parent.is_dir():
        raise LearningError(f"{out}: its folder {out.parent} does not exist")
    if val is not None and val_dataset is not None:
        raise LearningError("give one validation set: --val DIR/CSV or --val-dataset NAME")
    problems: list[tuple[Path, str]] = []
    if unlabelled:
        if classes:
            raise LearningError("--classes selects labelled objects; an --unlabelled folder has none")
        paths, problems = unlabelled_folder(data)
        labels: list[str] | None = None
    else:
        labelled = read_labelled(data, classes)
        labelled.check_trainable()
        paths, labels, problems = labelled.paths, labelled.labels, list(labelled.problems)

    trainer = Trainer(preset, config, progress=progress, echo=echo, cache_path=cache)
    views, ok = trainer.views([Item(p) for p in paths], "training images", problems)
    paths = [paths[i] for i in ok]
    mined_summary = None
    if unlabelled:
        E = np.stack([unwhitened_rmac(v) for v in views])
        mined = mine_groups(paths, E, k=mine_k, min_inliers=min_inliers, max_partners=max_partners,
                            max_keypoints=MAX_KEYPOINTS, progress=progress, problems=problems)
        keep = mined.kept
        mined_summary = {"images": len(paths), "kept": int(len(keep)), "groups": mined.count,
                         "pairs_tried": mined.tried, "pairs_verified": len(mined.verified),
                         "max_partners": max_partners, "min_inliers": min_inliers, "mine_k": mine_k,
                         "edges": [(str(paths[i]), str(paths[j]), n) for i, j, n in mined.edges],
                         "verified": [(str(paths[i]), str(paths[j]), n) for i, j, n in mined.verified]}
        discounted = (f", {len(mined.edges)} keep {min_inliers} inliers without repeated structure"
                      if max_partners > 0 else "")
        echo(f"mined {mined.count} groups from {len(paths)} images: {len(mined.verified)} of {mined.tried} shortlisted "
             f"pairs verified{discounted}, {len(paths) - len(keep)} images in no verified pair dropped")
        if mined.count < 2:
            raise LearningError(f"{data}: mining found {mined.count} group(s) of matching views; training needs at "
                                "least two objects (lower --min-inliers, raise --mine-k, or label the folder)")
        labels = [f"group{mined.groups[i]:04d}" for i in keep]
        views, paths = [views[i] for i in keep], [paths[i] for i in keep]
        groups_csv = out.with_suffix(".groups.csv")
        write_groups_csv(paths, labels, groups_csv)
        echo(f"wrote {groups_csv}")
    else:
        labels = [labels[i] for i in ok]
        if len(set(labels)) < 2 or max(labels.count(c) for c in set(labels)) < 2:
            raise LearningError(f"{data}: after leaving out unreadable images, training needs two objects and one "
                                "of them with two images")

    validation = None
    if val is not None:
        vl = read_labelled(val)
        validation = LabelledValidation([Item(p) for p in vl.paths], vl.labels, str(val))
    elif val_dataset is not None:
        from ..evaluation.datasets import load_dataset
        validation = DatasetValidation(load_dataset(val_dataset, data=val_data))
    if validation is not None:
        validation.views, _ = trainer.views(validation.items, f"validation images ({validation.name})")

    data_key = hashlib.sha1("\n".join(f"{Path(p).absolute()}|{c}" for p, c in zip(paths, labels)).encode()).hexdigest()
    result = trainer.train(views, labels, data_key=data_key, validation=validation, state_path=state_path_of(out),
                           on_update=on_update)
    history = result.history
    meta = {"preset": preset.name, "init_weights": preset["features"]["weights"], "layer": preset["features"]["layer"],
            "train_blocks": config.train_blocks, "loss": config.loss, "epochs": config.epochs, "steps": result.steps,
            "trained_on": str(data), "unlabelled": unlabelled, "images": len(paths), "objects": len(set(labels)),
            "config": json.dumps(asdict(config)), "history": json.dumps(_finite(history))}
    save_model(result.net.model_checkpoint(meta), out)
    history_file = out.with_suffix(".history.json")
    history_file.write_text(json.dumps({"model": str(out), "config": asdict(config), "preset": preset.name,
                                        "trained_on": str(data), "images": len(paths), "objects": len(set(labels)),
                                        "mined": mined_summary, "history": _finite(history)}, indent=1))
    echo(f"wrote {out} and {history_file}; use it with: --weights {out} --set whitening.method=weights")
    return TrainOutcome(out, history, len(paths), len(set(labels)), problems, mined_summary, result.resumed_from)


def _finite(rows: list[dict]) -> list[dict]:
    """History rows with NaN as None (strict JSON)."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
