"""Training an RPN head (`instar.extract.regions.rpn`) on a frozen trunk's maps, from boxes instar estimated by matching.

Faster R-CNN's RPN recipe (Ren et al. sec. 3.1.2-3.1.3, as Gordo et al. sec. 3.2 use it): an anchor is positive
when its IoU with a box is >= 0.7, or when it is a box's best anchor; negative when its IoU with every box is
< 0.3; others are ignored. Each image contributes 256 sampled anchors, at most half positive; the loss is the
binary cross-entropy of the objectness over them plus the smooth-L1 (beta 1/9) box regression of the positives,
both divided by the number sampled. Anchors crossing the image border are kept (the large anchors nearly always
cross it on our images; the regression learns to pull them in, and proposals are clipped).

The trunk is frozen, so its maps are computed once (each image at the image stage's longest side `max_size`,
never enlarged, and its horizontal flip when `flip`) and the head trains on the cached maps: Adam, `lr` for the
first 3/4 of the epochs and lr/10 after, one image per step with gradients averaged over 8 images.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.boxes import iou_matrix
from ..core.progress import Progress, no_progress
from ..core.registry import TRUNKS
from ..extract.features.cnn import feature_maps
from ..extract.images import ImageLoadError, fit_image, load_image
from ..extract.regions import MapGeometry
from ..extract.regions.rpn import ANCHOR_RATIOS, ANCHOR_SCALES, RPNHead, anchor_shapes, checkpoint, encode, grid_anchors
from ..tools.matching import boxes_from_object_folders, read_boxes_json

POSITIVE_IOU = 0.7
NEGATIVE_IOU = 0.3
ANCHORS_PER_IMAGE = 256
POSITIVE_FRACTION = 0.5
SMOOTH_L1_BETA = 1.0 / 9
IMAGES_PER_STEP = 8


class TrainingError(ValueError):
    """Training cannot start or go on (no usable images, a bad boxes file); the message says why."""


@dataclass
class Sample:
    """One training image: its file, its name (path relative to the training folder) and its object boxes
    (G, 4) [x0, y0, x1, y1] in the original image's pixels."""
    path: Path
    name: str
    boxes: np.ndarray


def collect_samples(folder: Path | str, boxes: Path | str | None = None, *, include: Sequence[str] = (),
                    progress: Progress = no_progress,
                    problems: list[tuple[Path, str]] | None = None) -> list[Sample]:
    """Training images with a box: from the boxes file `boxes` (paths relative to `folder`) or, without one,
    estimated by matching within each object's sub-folder of `folder`. `include` globs (fnmatch on the relative
    path) keep only matching images. Images whose box is null are left out; a listed file that is missing is
    reported in `problems`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"{folder}: not a folder")
    problems = [] if problems is None else problems
    if boxes is not None:
        table = read_boxes_json(boxes)
        if not table:
            raise TrainingError(f"{boxes}: lists no images")
    else:
        records = boxes_from_object_folders(folder, progress=progress, problems=problems)
        table = {name: r.box for name, r in records.items()}
    samples = []
    for name, box in table.items():
        if include and not any(fnmatch.fnmatch(name, pat) for pat in include):
            continue
        if box is None:
            continue
        path = folder / name
        if not path.is_file():
            problems.append((path, f"listed in {boxes} but not found under {folder}"))
            continue
        samples.append(Sample(path, name, np.asarray([box], np.float64)))
    if not samples:
        what = f"{boxes} (relative to {folder})" if boxes is not None else f"{folder}'s object sub-folders"
        filt = f" matching {', '.join(include)}" if include else ""
        raise TrainingError(f"no training image with a box{filt} in {what}")
    return samples


# ----------------------------------------------------------------------------- targets and loss


def anchor_labels(anchors: torch.Tensor, gt: torch.Tensor, positive_iou: float = POSITIVE_IOU,
                  negative_iou: float = NEGATIVE_IOU) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: label 1 (object), 0 (background) or -1 (ignored), and the index of its best box."""
    iou = iou_matrix(anchors, gt)                        # (N, G)
    best_iou, best_gt = iou.max(dim=1)
    labels = torch.full((len(anchors),), -1, dtype=torch.int64)
    labels[best_iou < negative_iou] = 0
    labels[best_iou >= positive_iou] = 1
    # each box's best anchors (ties included) are positive, however low their IoU
    per_gt_best = iou.max(dim=0).values               # (G,)
    is_best = (iou == per_gt_best[None, :]) & (per_gt_best[None, :] > 0)
    anchor_idx, gt_idx = torch.nonzero(is_best, as_tuple=True)
    labels[anchor_idx] = 1
    best_gt[anchor_idx] = gt_idx
    return labels, best_gt


def sample_anchors(labels: torch.Tensor, generator: torch.Generator, batch: int = ANCHORS_PER_IMAGE,
                   positive_fraction: float = POSITIVE_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the sampled positive and negative anchors (at most `batch`, positives at most a fraction)."""
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    n_pos = min(len(pos), int(batch * positive_fraction))
    n_neg = min(len(neg), batch - n_pos)
    pos = pos[torch.randperm(len(pos), generator=generator)[:n_pos]]
    neg = neg[torch.randperm(len(neg), generator=generator)[:n_neg]]
    return pos, neg


def rpn_loss(logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, gt: torch.Tensor,
             generator: torch.Generator, labels: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(objectness loss, box loss) of one image: `logits` (N,), `deltas` (N, 4), `anchors` (N, 4), `gt` (G, 4);
    `labels` = `anchor_labels(anchors, gt)` when already computed."""
    labels, matched = anchor_labels(anchors, gt) if labels is None else labels
    pos, neg = sample_anchors(labels, generator)
    sampled = torch.cat([pos, neg])
    n = max(1, len(sampled))
    target = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    cls = F.binary_cross_entropy_with_logits(logits[sampled], target, reduction="sum") / n
    if len(pos):
        reg_target = encode(anchors[pos], gt[matched[pos]])
        reg = F.smooth_l1_loss(deltas[pos], reg_target, beta=SMOOTH_L1_BETA, reduction="sum") / n
    else:
        reg = deltas.sum() * 0.0
    return cls, reg


# ----------------------------------------------------------------------------- data


@dataclass
class CachedMap:
    """One training view: its map (C, h, w), its anchors (h*w*A, 4), boxes (G, 4) in the prepared image, and
    the anchors' labels (`anchor_labels`)."""
    name: str
    fmap: torch.Tensor
    anchors: torch.Tensor
    boxes: torch.Tensor
    labels: tuple[torch.Tensor, torch.Tensor]


def _views(sample: Sample, max_size: int, flip: bool) -> list[tuple[Image.Image, np.ndarray]]:
    full = load_image(sample.path)
    image = fit_image(full, max_size, path=sample.path)
    s = np.array([image.width / full.width, image.height / full.height] * 2)
    boxes = np.clip(sample.boxes * s, 0, [image.width, image.height] * 2)
    out = [(image, boxes)]
    if flip:
        flipped = boxes.copy()
        flipped[:, [0, 2]] = image.width - boxes[:, [2, 0]]
        out.append((image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flipped))
    return out


def cache_maps(samples: Sequence[Sample], model: torch.nn.Module, shapes: torch.Tensor, *, max_size: int,
               flip: bool, progress: Progress = no_progress,
               problems: list[tuple[Path, str]] | None = None) -> list[CachedMap]:
    """Run the frozen trunk once over every training view."""
    problems = [] if problems is None else problems
    out = []
    for sample in progress(samples, desc="trunk maps of the training images"):
        try:
            views = _views(sample, max_size, flip)
        except ImageLoadError as e:
            problems.append((sample.path, e.reason))
            continue
        for image, boxes in views:
            fmap = feature_maps(model, image)[0]
            geometry = MapGeometry.of(image.size, (fmap.shape[-1], fmap.shape[-2]), model.stride)
            anchors = grid_anchors(fmap.shape[-1], fmap.shape[-2], geometry.stride, shapes)
            gt = torch.as_tensor(boxes, dtype=torch.float32)
            out.append(CachedMap(sample.name, fmap, anchors, gt, anchor_labels(anchors, gt)))
    return out


# ----------------------------------------------------------------------------- training


def train_head(head: RPNHead, maps: Sequence[CachedMap], *, epochs: int, lr: float = 1e-3, seed: int = 0,
               images_per_step: int = IMAGES_PER_STEP, log: Callable[[str], None] = lambda line: None) -> list[float]:
    """Train `head` in place on cached maps; returns the mean loss of each epoch."""
    if not maps:
        raise TrainingError("no training maps")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    decay_at = max(1, int(round(epochs * 0.75)))
    history = []
    head.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        if epoch == decay_at:
            for group in opt.param_groups:
                group["lr"] = lr / 10
        order = torch.randperm(len(maps), generator=gen).tolist()
        totals = np.zeros(2)
        opt.zero_grad()
        for step, i in enumerate(order, 1):
            m = maps[i]
            logits, deltas = head(m.fmap[None])
            cls, reg = rpn_loss(logits[0], deltas[0], m.anchors, m.boxes, gen, m.labels)
            ((cls + reg) / images_per_step).backward()
            totals += (cls.item(), reg.item())
            if step % images_per_step == 0 or step == len(order):
                opt.step()
                opt.zero_grad()
        cls_mean, reg_mean = totals / len(order)
        history.append(float(cls_mean + reg_mean))
        log(f"epoch {epoch + 1:3d}/{epochs}  loss {history[-1]:.4f}  (objectness {cls_mean:.4f}, boxes {reg_mean:.4f})"
            f"  {time.perf_counter() - start:6.1f} s")
    head.eval()
    return history


def train_rpn(samples: Sequence[Sample], *, arch: str = "efficientnet-lite0", layer: str = "stride32",
              weights: str = "imagenet", max_size: int = 1024, epochs: int = 30, hidden: int = 128,
              lr: float = 1e-3, flip: bool = True, seed: int = 0, anchor_scales: Sequence[float] = ANCHOR_SCALES,
              anchor_ratios: Sequence[float] = ANCHOR_RATIOS, progress: Progress = no_progress,
              log: Callable[[str], None] = lambda line: None,
              problems: list[tuple[Path, str]] | None = None) -> dict:
    """Train a head on the frozen `arch` / `layer` trunk (loaded with `weights`) over `samples`; returns the
    checkpoint dict (`instar.regions.rpn.checkpoint`), its meta recording the trunk, the image size, the
    anchors, the training images and the loss history."""
    if arch not in TRUNKS:
        raise TrainingError(f"--arch {arch!r} is not a trunk; known: {', '.join(TRUNKS.names())}")
    layers = TRUNKS.entry(arch).layers
    if layer not in layers:
        raise TrainingError(f"--layer {layer!r} is not a layer of {arch} (its layers: {', '.join(layers)})")
    if max_size < 32:
        raise TrainingError(f"--max-size {max_size}: must be at least 32 pixels")
    model, _ = TRUNKS.entry(arch).factory(weights, layer, None)
    shapes = anchor_shapes(anchor_scales, anchor_ratios)
    t0 = time.perf_counter()
    maps = cache_maps(samples, model, shapes, max_size=max_size, flip=flip, progress=progress, problems=problems)
    if not maps:
        raise TrainingError("none of the training images could be read")
    cache_s = time.perf_counter() - t0
    log(f"cached {len(maps)} trunk maps ({arch} {layer}, longest side {max_size}) in {cache_s:.1f} s")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = RPNHead(model.out_channels, hidden, len(shapes))
    t1 = time.perf_counter()
    history = train_head(head, maps, epochs=epochs, lr=lr, seed=seed, log=log)
    meta = {"arch": arch, "layer": layer, "in_channels": int(model.out_channels), "stride": int(model.stride),
            "hidden": int(hidden), "anchor_scales": [float(s) for s in anchor_scales],
            "anchor_ratios": [float(r) for r in anchor_ratios], "max_size": int(max_size),
            "trunk_weights": weights, "epochs": int(epochs), "lr": float(lr), "flip": bool(flip), "seed": int(seed),
            "trained_on": sorted({m.name for m in maps}), "loss_history": [round(v, 5) for v in history],
            "train_seconds": round(time.perf_counter() - t1, 1), "cache_seconds": round(cache_s, 1)}
    return checkpoint(head, meta)


def save_checkpoint(ckpt: dict, path: Path | str) -> None:
    """Write a checkpoint dict with torch.save (readable with weights_only=True)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    torch.save(ckpt, path)

