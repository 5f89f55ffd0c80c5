"""Class-specific spatial re-ranking (CS-SR, Salvador et al., Faster R-CNN features for instance search, sec. 3.2,
3.3 and 4.4): a classifier over RoI-pooled region features, fine-tuned on the query instances themselves, scores
each candidate image by its best region's probability of being the query's object, and that region is where the
object is.

Classifier (`CSSRHead`): the region descriptor the index stores (RPA-max: RoI max-pooling on the first scale's
map, L2-normalised; `region_pooling.method = "max"`) -> fully connected (`hidden`, ReLU) -> K + 1 class logits
(class 0 the background, 1..K the query objects). Salvador et al. fine-tune Faster R-CNN's fc6/fc7/cls_score after
RoI pooling; here the RoI feature is the stored region descriptor itself, so re-ranking needs nothing but the
index (strategy #1).

Training set (Salvador et al. sec. 4.4): the query images with their boxes, each also flipped horizontally; one
class per query object, where queries whose positives (the dataset's ground truth) overlap with Jaccard >= 0.5 show
the same object (Oxford's five queries of a building are one class, as in the paper). RoIs are every cell box of
the image's map (a superset of any proposal method's boxes once snapped to cells, as RoI pooling sees them): IoU
with the query box >= 0.5 is the query's object, < 0.3 background, in between unused; the box itself is always a
positive. Mini-batches follow Fast R-CNN: 2 images x 64 RoIs, a quarter of them positive, weight decay 5e-4. The
optimiser is Adam (lr 1e-3; the trunk's stage at a tenth of it), not Faster R-CNN's SGD: a classifier started from
scratch on L2-normalised 1280-D inputs barely moves in the few hundred SGD steps a CPU affords.

- Strategy #1: only the classifier learns; the trunk is frozen, the RoI features are computed once.
- Strategy #2: the classifier and the trunk's last stage (`train_blocks` MBConv blocks + the head conv,
  `rmac_net.TRUNK_SPLITS`) learn. The trunk changes, so the database must be described again with it: the
  checkpoint is then also the trunk's checkpoint (`--weights FILE`), as Salvador et al. re-run the whole pipeline
  with the fine-tuned network.

Checkpoint: ``{"state_dict": {"cssr.*": classifier, [trunk keys for #2]}, "meta": {format, classes, query names,
in_channels, hidden, strategy, ...}}``, read by the `cs-sr` re-ranker (`rerank.weights`). The query's object is
the class the classifier gives the query box (its region descriptor, `Query.box_descriptor`), so a new photo of a
trained object is re-ranked too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.boxes import paired_iou
from ..core.norms import l2n
from ..core.progress import Progress, no_progress
from ..extract.features.cnn import scaled_inputs
from ..extract.extractor import Extractor
from ..extract.images import check_box, load_image
from ..extract.pooling.functional import region_mac
from ..extract.regions import MapGeometry
from ..search.rerank.cs_sr import FORMAT, CSSRHead
from .rmac_net import LearningError, split_trunk

FG_IOU, BG_IOU = 0.5, 0.3
ROIS_PER_IMAGE, IMAGES_PER_STEP, FG_FRACTION = 64, 2, 0.25
CACHED_FG, CACHED_BG = 128, 384  # RoIs per image whose features strategy #1 computes once
TRUNK_LR = 0.1        # the trunk's last stage (strategy #2) learns at a tenth of the classifier's rate
WEIGHT_DECAY = 5e-4   # Faster R-CNN's


@dataclass
class QueryObject:
    """One training query: its image, box (original pixels), object class (1..K) and name."""
    image: Path
    box: tuple[float, float, float, float]
    label: int
    name: str


def _positives(gt: dict) -> set[int]:
    keys = ("easy", "hard") if "easy" in gt else ("ok",)
    return {int(i) for k in keys for i in np.asarray(gt.get(k, [])).ravel()}


def query_objects(dataset, min_jaccard: float = 0.5) -> tuple[list[QueryObject], list[str]]:
    """The dataset's queries with boxes as training objects; queries whose positive sets overlap (Jaccard >=
    `min_jaccard`) are one object. Returns the objects and the class names (each class's first query)."""
    queries = [(q, _positives(g)) for q, g in zip(dataset.queries, dataset.ground_truth)]
    boxed = [(q, pos) for q, pos in queries if q.box is not None]
    if not boxed:
        raise LearningError(f"{dataset.name}: no query has a box; CS-SR learns the query objects from their boxes")
    parent = list(range(len(boxed)))

    def find(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for a in range(len(boxed)):
        for b in range(a + 1, len(boxed)):
            pa, pb = boxed[a][1], boxed[b][1]
            if pa and pb and len(pa & pb) / len(pa | pb) >= min_jaccard:
                parent[max(find(a), find(b))] = min(find(a), find(b))
    roots = sorted({find(a) for a in range(len(boxed))})
    names = [boxed[r][0].name for r in roots]
    objects = [QueryObject(Path(q.image), tuple(float(v) for v in q.box), roots.index(find(a)) + 1, q.name)
               for a, (q, _) in enumerate(boxed)]
    return objects, names


def all_cell_boxes(h: int, w: int) -> np.ndarray:
    """Every [x0, y0, x1, y1) box of whole cells on an h x w map, (h(h+1)/2 * w(w+1)/2, 4) int64."""
    xs = [(a, b) for a in range(w) for b in range(a + 1, w + 1)]
    ys = [(a, b) for a in range(h) for b in range(a + 1, h + 1)]
    x = np.asarray(xs, np.int64)
    y = np.asarray(ys, np.int64)
    xi, yi = np.meshgrid(np.arange(len(x)), np.arange(len(y)), indexing="ij")
    return np.stack([x[xi.ravel(), 0], y[yi.ravel(), 0], x[xi.ravel(), 1], y[yi.ravel(), 1]], axis=1)


@dataclass
class TrainingView:
    """One training image (a query image or its flip) on the trunk's first-scale map: `frozen` the frozen part's
    output (strategy #2) and `fmap` the map; `fg` / `bg` cell boxes (R, 4); `box_cells` the query box's cells."""
    frozen: torch.Tensor
    fmap: torch.Tensor
    fg: np.ndarray
    bg: np.ndarray
    box_cells: np.ndarray
    label: int


@torch.no_grad()
def training_view(extractor, split, image: Image.Image, box, label: int) -> TrainingView:
    xs = scaled_inputs(split.model, image, extractor.features.scales)[0]
    pre = split.frozen(xs)
    fmap = split.trained(pre)[0]
    h, w = fmap.shape[-2:]
    geometry = MapGeometry.of(image.size, (w, h), getattr(split.model, "stride", 1))
    cells = all_cell_boxes(h, w)
    pixels = geometry.cells_to_pixels(cells)
    iou = paired_iou(pixels, np.broadcast_to(np.asarray(box, np.float64), pixels.shape))
    box_cells = geometry.pixels_to_cells(np.asarray([box], np.float32))
    fg = np.concatenate([box_cells, cells[iou >= FG_IOU]])
    return TrainingView(pre, fmap, fg, cells[iou < BG_IOU], box_cells, label)


def _flip(image: Image.Image, box) -> tuple[Image.Image, tuple[float, float, float, float]]:
    W = image.width
    x0, y0, x1, y1 = box
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (W - x1, y0, W - x0, y1)


def _draw(cells: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n <= 0 or not len(cells):
        return cells[:0]
    return cells[rng.choice(len(cells), n, replace=len(cells) < n)]


# ----------------------------------------------------------------------------- training


def train_cssr(dataset, preset, *, strategy: int = 1, train_blocks: int = 1, steps: int = 1000, lr: float = 1e-3,
               hidden: int = 256, seed: int = 0, progress: Progress = no_progress,
               echo: Callable[[str], None] = print) -> dict:
    """Fine-tune CS-SR's classifier (and for strategy #2 the trunk's last stage) on `dataset`'s query boxes and
    their flips; returns the checkpoint (see the module docstring)."""
    if strategy not in (1, 2):
        raise LearningError(f"strategy {strategy}: 1 (classifier only) or 2 (classifier and the last trunk stage)")
    if steps < 1:
        raise LearningError(f"steps {steps}: must be at least 1")
    if preset["features"]["type"] != "cnn":
        raise LearningError(f"preset {preset.name!r}: CS-SR classifies RoI-pooled CNN features; features.type is "
                            f"{preset['features']['type']!r}")
    if preset["region_pooling"]["method"] != "max":
        raise LearningError(f"preset {preset.name!r}: CS-SR classifies the RPA-max region descriptors an index stores; "
                            "set region_pooling.method = max (and a regions.method)")
    extractor = Extractor(preset)
    objects, names = query_objects(dataset)
    split = split_trunk(extractor.model, preset["features"]["arch"], train_blocks if strategy == 2 else 0)
    views: list[TrainingView] = []
    for obj in progress(objects, desc="query images"):
        original = extractor.load(obj.image)  # the whole query image, shrunk as the image stage does
        full = load_image(obj.image)
        x0, y0, x1, y1 = check_box(obj.box, full.width, full.height, source=f"{obj.image}: box")
        sx, sy = original.width / full.width, original.height / full.height
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        for image, b in ((original, box), _flip(original, box)):
            views.append(training_view(extractor, split, image, b, obj.label))
    rng = np.random.default_rng(seed)
    torch_gen = torch.Generator().manual_seed(seed)
    in_channels = int(views[0].fmap.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = CSSRHead(in_channels, len(names), hidden)
    cached = None
    if strategy == 1:  # frozen features: each view's RoI descriptors once
        cached = []
        for v in views:
            fg, bg = _draw(v.fg, min(len(v.fg), CACHED_FG), rng), _draw(v.bg, min(len(v.bg), CACHED_BG), rng)
            cached.append((l2n(region_mac(v.fmap, fg)), l2n(region_mac(v.fmap, bg))))
    for p in extractor.model.parameters():
        p.requires_grad_(False)
    for p in split.parameters():
        p.requires_grad_(True)
    groups = [{"params": list(head.parameters()), "lr": lr}]
    if split.trains:
        groups.append({"params": split.parameters(), "lr": lr * TRUNK_LR})
    opt = torch.optim.Adam(groups, weight_decay=WEIGHT_DECAY)
    n_fg = int(round(ROIS_PER_IMAGE * FG_FRACTION))
    t0 = time.perf_counter()
    window: list[tuple[float, float]] = []
    for step in progress(range(steps), desc=f"CS-SR strategy #{strategy}"):
        feats, labels = [], []
        for i in torch.randperm(len(views), generator=torch_gen)[:IMAGES_PER_STEP].tolist():
            v = views[i]
            if cached is not None:
                fg_all, bg_all = cached[i]
                fg = fg_all[torch.as_tensor(rng.choice(len(fg_all), n_fg, replace=len(fg_all) < n_fg))]
                n_bg = min(ROIS_PER_IMAGE - n_fg, len(bg_all))
                bg = bg_all[torch.as_tensor(rng.choice(len(bg_all), n_bg, replace=False))] if n_bg else fg_all[:0]
            else:
                fmap = split.trained(v.frozen)[0]
                fg = l2n(region_mac(fmap, _draw(v.fg, n_fg, rng)))
                bg = l2n(region_mac(fmap, _draw(v.bg, min(ROIS_PER_IMAGE - n_fg, len(v.bg)), rng)))
            feats += [fg, bg]
            labels += [torch.full((len(fg),), v.label), torch.zeros(len(bg), dtype=torch.int64)]
        logits = head(torch.cat(feats))
        target = torch.cat(labels)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append((float(loss.detach()), float((logits.argmax(1) == target).float().mean())))
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            l, a = np.mean(window, axis=0)
            echo(f"step {step + 1}/{steps}  loss {l:.4f}  RoI accuracy {100 * a:.1f}%  {time.perf_counter() - t0:.0f} s")
            window = []
    # which object the classifier gives each query box (how the re-ranker picks the query's class)
    head.eval()
    own = 0
    with torch.no_grad():
        for v in views[::2]:
            fmap = split.trained(v.frozen)[0]
            probs = F.softmax(head(l2n(region_mac(fmap, v.box_cells))), dim=1)[0, 1:]
            own += int(int(probs.argmax()) + 1 == v.label)
    echo(f"the classifier gives {own} of {len(objects)} query boxes their own object")
    state = {f"cssr.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    meta = {"format": FORMAT, "strategy": strategy, "classes": names, "in_channels": in_channels, "hidden": hidden,
            "queries": [o.name for o in objects], "query_classes": [o.label for o in objects],
            "architecture": preset["features"]["arch"], "layer": preset["features"]["layer"],
            "train_blocks": train_blocks if strategy == 2 else 0, "steps": steps, "lr": lr,
            "trained_on": dataset.name, "query_boxes_own_class": own, "seconds": time.perf_counter() - t0}
    if strategy == 2:
        state.update({k: v.detach().clone().contiguous() for k, v in extractor.model.state_dict().items()})
    return {"state_dict": state, "meta": meta}


# ----------------------------------------------------------------------------- the re-ranker


def checkpoint_summary(ckpt: dict) -> str:
    meta = ckpt["meta"]
    return (f"{len(meta['classes'])} objects from {len(meta['queries'])} queries of {meta['trained_on']}, strategy "
            f"#{meta['strategy']}" + (f" (last {meta['train_blocks']} blocks + head conv)" if meta["strategy"] == 2 else ""))

