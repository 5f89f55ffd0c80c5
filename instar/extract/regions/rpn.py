"""Learned region proposals: a Region Proposal Network head (Ren et al.'s Faster R-CNN RPN, as Gordo et al.,
Deep Image Retrieval sec. 3.2, put it on a frozen retrieval trunk) over the trunk's conv map.

Head: a 3x3 conv (`hidden` channels, 128 in the packaged head) and ReLU, then two sibling 1x1 convs giving,
for each of the A = 9 anchors of every cell, an objectness logit and a box regression (dx, dy, dw, dh) in
Faster R-CNN's parametrisation (`encode` / `decode`). Proposals: sigmoid scores, the `PRE_NMS` best decoded,
clipped to the image, boxes under `MIN_SIZE` px dropped, non-maximum suppression at IoU `nms` (OpenCV's
`cv2.dnn.NMSBoxes`), the `top` best kept; the whole image always comes first (score 1).

Anchors (our choice; the papers' are for 600-1000 px images on a stride-16 VGG map): centred on every cell of
the stride-32 map, sizes (square root of the area) 96, 256 and 640 px in the prepared image, each at aspect
ratios h/w 0.5, 1 and 2. Images reach the trunk with their longest side 512-1024 px and objects from ~10% to
100% of the image, i.e. 50-1024 px; three log-spaced sizes a factor ~2.6 apart put every object within a factor
~1.6 of an anchor's size (96 for 60-155 px, 256 for 155-400 px, 640 for 400-1050 px), and regression does the
rest. The sizes and ratios are stored in each checkpoint, so a head trained with others proposes with its own.

Checkpoints are plain dicts (`torch.load(weights_only=True)`): ``{"state_dict": head tensors, "meta": {format,
arch, layer, in_channels, stride, hidden, anchor_scales, anchor_ratios, max_size, trained_on, ...}}``. The
`weights` parameter is ``packaged:NAME`` (a file shipped in ``instar/models/``), a ``.pth`` path, or
``random:SEED`` (a seeded untrained head, for tests). A checkpoint for another trunk or tap is refused.
"""
from __future__ import annotations

from typing import Annotated

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ...core.checkpoints import WeightsError, random_seed, read_checkpoint
from ...core.protocols import RegionsStage
from ...core.registry import REGIONS, Range
from . import MapGeometry, Regions

FORMAT = "instar-rpn/1"
ANCHOR_SCALES = (96.0, 256.0, 640.0)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # height / width
PACKAGED_PREFIX = "packaged:"
PACKAGED_RPN = "rpn-lite0-smvs001-050.pth"
DEFAULT_WEIGHTS = PACKAGED_PREFIX + PACKAGED_RPN
PRE_NMS = 2000     # best-scored anchors decoded before NMS
MIN_SIZE = 4.0     # proposals narrower or lower than this many pixels are dropped
DELTA_CLIP = math.log(1000.0 / 16)  # largest dw, dh decoded (Faster R-CNN's bound): no overflow in exp


# ----------------------------------------------------------------------------- boxes


def anchor_shapes(scales=ANCHOR_SCALES, ratios=ANCHOR_RATIOS) -> torch.Tensor:
    """(A, 2) float32 anchor [width, height] for every scale (sqrt of the area) x ratio (h / w), scale-major."""
    out = [(s / math.sqrt(r), s * math.sqrt(r)) for s in scales for r in ratios]
    return torch.tensor(out, dtype=torch.float32)


def grid_anchors(map_w: int, map_h: int, stride: tuple[float, float], shapes: torch.Tensor) -> torch.Tensor:
    """(h * w * A, 4) float32 [x0, y0, x1, y1] anchors centred on each cell ((j + 0.5) * sx, (i + 0.5) * sy),
    in row-major cell order, the A shapes of a cell together (the head's output order)."""
    sx, sy = stride
    cy, cx = torch.meshgrid((torch.arange(map_h, dtype=torch.float32) + 0.5) * sy,
                            (torch.arange(map_w, dtype=torch.float32) + 0.5) * sx, indexing="ij")
    centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2)   # (h*w, 1, 2)
    half = (shapes / 2).reshape(1, -1, 2)                        # (1, A, 2)
    return torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4)


def encode(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Regression targets (dx, dy, dw, dh) taking `anchors` (N, 4) to `boxes` (N, 4): centre offsets in anchor
    widths / heights and log size ratios (Faster R-CNN eq. 2)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    return torch.stack([(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)], dim=1)


def decode(anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4) [x0, y0, x1, y1] from `anchors` (N, 4) moved by `deltas` (N, 4); the inverse of `encode`."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    cx, cy = ax + deltas[:, 0] * aw, ay + deltas[:, 1] * ah
    w = aw * torch.exp(deltas[:, 2].clamp(max=DELTA_CLIP))
    h = ah * torch.exp(deltas[:, 3].clamp(max=DELTA_CLIP))
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


def nms(boxes: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression through OpenCV: indices of the kept boxes, best score first. A box is
    dropped when its IoU with a better kept box exceeds `iou_threshold`."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(b) == 0:
        return np.zeros(0, np.int64)
    # OpenCV keeps only scores above its threshold (>= 0): rank-based scores keep every box, in score order
    order = np.argsort(-s, kind="stable")
    rank_score = np.empty(len(s))
    rank_score[order] = (len(s) - np.arange(len(s))) / len(s)
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), rank_score.tolist(), 0.0, float(iou_threshold))
    return np.asarray(keep, dtype=np.int64).reshape(-1)


# ----------------------------------------------------------------------------- head


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then sibling 1x1 convs: `num_anchors` objectness logits and 4 * `num_anchors` box deltas
    per cell. forward: (N, C, h, w) -> logits (N, h*w*A), deltas (N, h*w*A, 4), in `grid_anchors` order."""

    def __init__(self, in_channels: int, hidden: int = 128, num_anchors: int = 9):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.cls = nn.Conv2d(hidden, num_anchors, 1)
        self.reg = nn.Conv2d(hidden, 4 * num_anchors, 1)
        self.num_anchors = num_anchors
        for m in (self.conv, self.cls, self.reg):  # Faster R-CNN's init
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.relu(self.conv(x))
        n, _, h, w = t.shape
        logits = self.cls(t).permute(0, 2, 3, 1).reshape(n, -1)
        deltas = self.reg(t).view(n, self.num_anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        return logits, deltas


@dataclass
class RPN:
    """A head with what it was trained on: `meta` holds arch, layer, in_channels, stride, anchor_scales,
    anchor_ratios, max_size, trained_on, ... (see the module docstring). `head` is None for a `random:SEED` head
    until the first map fixes its input channels."""
    head: RPNHead | None
    meta: dict
    source: str
    seed: int | None = None
    shapes: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.shapes = anchor_shapes(self.meta["anchor_scales"], self.meta["anchor_ratios"])

    def _head_for(self, channels: int) -> RPNHead:
        if self.head is None:  # random:SEED
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed or 0)
                self.head = RPNHead(channels, self.meta["hidden"], len(self.shapes)).eval()
            self.meta["in_channels"] = channels
        expected = self.meta["in_channels"]
        if channels != expected:
            raise WeightsError(
                f"{self.source}: this RPN head was trained on {self.meta['arch']} {self.meta['layer']} maps of "
                f"{expected} channels, but the map it is given has {channels}: use the trunk it was trained on "
                f"(features.arch = {self.meta['arch']!r}, features.layer = {self.meta['layer']!r}) or train a head "
                "for this trunk (instar train-proposals)")
        return self.head

    @torch.no_grad()
    def propose(self, fmap: torch.Tensor, geometry: MapGeometry, top: Annotated[int, Range(ge=1)] = 300, nms_iou: float = 0.7,
                pre_nms: int = PRE_NMS, min_size: float = MIN_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """Proposals on one (C, h, w) map: (K, 4) float32 pixel boxes in `geometry`'s image and (K,) float32
        objectness, best first, K <= `top` (the whole image is not added here)."""
        head = self._head_for(int(fmap.shape[0]))
        h, w = int(fmap.shape[-2]), int(fmap.shape[-1])
        logits, deltas = head(fmap[None].to(torch.float32))
        scores = torch.sigmoid(logits[0])
        anchors = grid_anchors(w, h, geometry.stride, self.shapes)
        best = torch.topk(scores, min(pre_nms, len(scores))).indices
        boxes = decode(anchors[best], deltas[0][best])
        W, H = geometry.image_size
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        ok = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
        boxes, s = boxes[ok], scores[best][ok]
        keep = nms(boxes.numpy(), s.numpy(), nms_iou)[:top]
        return boxes[keep].numpy().astype(np.float32), s[keep].numpy().astype(np.float32)


# ----------------------------------------------------------------------------- checkpoints


HEAD_KEYS = ("conv.weight", "conv.bias", "cls.weight", "cls.bias", "reg.weight", "reg.bias")
META_KEYS = ("format", "arch", "layer", "in_channels", "hidden", "anchor_scales", "anchor_ratios")


def packaged_path(name: str) -> Path:
    """Path of a head shipped in instar/models/."""
    return Path(str(resources.files("instar") / "models" / name))


def resolve_weights(weights: str) -> str:
    """A `packaged:NAME` spec -> the shipped file's path; anything else unchanged."""
    if weights.startswith(PACKAGED_PREFIX):
        name = weights[len(PACKAGED_PREFIX):]
        path = packaged_path(name)
        if not name or not path.is_file():
            raise WeightsError(f"{weights}: no RPN head {name!r} is shipped with instar (instar/models/ holds "
                               f"{', '.join(sorted(p.name for p in path.parent.glob('*.pth'))) or 'none'})")
        return str(path)
    return weights


def checkpoint(head: RPNHead, meta: dict) -> dict:
    """The dict `save`d and `load_rpn` reads back: float32 head tensors and plain-typed meta."""
    return {"state_dict": {k: v.detach().to(torch.float32).contiguous().clone() for k, v in head.state_dict().items()},
            "meta": {"format": FORMAT, **meta}}


def rpn_from_checkpoint(obj: object, source: str) -> RPN:
    """Validate a loaded checkpoint strictly (every key, every shape, the meta) and build its `RPN`."""
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict) or not isinstance(obj.get("meta"), dict):
        raise WeightsError(f"{source}: not an instar RPN checkpoint (expected a dict with 'state_dict' and 'meta'; "
                           "write one with instar train-proposals)")
    meta, sd = dict(obj["meta"]), obj["state_dict"]
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{source}: RPN checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise WeightsError(f"{source}: RPN checkpoint meta lacks {', '.join(missing)}")
    unexpected = sorted(set(sd) - set(HEAD_KEYS))
    if unexpected:
        raise WeightsError(f"{source}: unexpected key {unexpected[0]!r} in an RPN head")
    for k in HEAD_KEYS:
        if k not in sd:
            raise WeightsError(f"{source}: missing key {k!r} of an RPN head")
        if not isinstance(sd[k], torch.Tensor):
            raise WeightsError(f"{source}: key {k!r} holds a {type(sd[k]).__name__}, not a tensor")
    try:
        shapes = anchor_shapes(meta["anchor_scales"], meta["anchor_ratios"])
        head = RPNHead(int(meta["in_channels"]), int(meta["hidden"]), len(shapes))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{source}: RPN checkpoint meta is inconsistent ({e})") from None
    expected = head.state_dict()
    for k, ref in expected.items():
        if tuple(sd[k].shape) != tuple(ref.shape):
            raise WeightsError(f"{source}: wrong shape for {k!r}: expected {tuple(ref.shape)} (in_channels "
                               f"{meta['in_channels']}, hidden {meta['hidden']}, {len(shapes)} anchors), "
                               f"found {tuple(sd[k].shape)}")
    head.load_state_dict({k: sd[k].to(torch.float32) for k in HEAD_KEYS}, strict=True)
    return RPN(head.eval(), meta, source)


def load_rpn(weights: str, *, arch: str = "efficientnet-lite0", layer: str = "stride32", hidden: int = 128) -> RPN:
    """The RPN that `weights` names (``packaged:NAME``, a .pth path, ``random:SEED``), checked to be for the
    `arch` / `layer` trunk tap. Raises WeightsError naming the file and the problem."""
    if not isinstance(weights, str) or not weights:
        raise WeightsError(f"RPN weights must be 'packaged:NAME', a .pth path or 'random:SEED'; got {weights!r}")
    seed = random_seed(weights, "RPN weights")
    if seed is not None:
        meta = {"format": FORMAT, "arch": arch, "layer": layer, "in_channels": None, "hidden": hidden,
                "anchor_scales": list(ANCHOR_SCALES), "anchor_ratios": list(ANCHOR_RATIOS), "trained_on": []}
        return RPN(None, meta, weights, seed=seed)
    source = resolve_weights(weights)
    rpn = rpn_from_checkpoint(read_checkpoint(source), source)
    if (rpn.meta["arch"], rpn.meta["layer"]) != (arch, layer):
        raise WeightsError(f"{source}: this RPN head was trained on {rpn.meta['arch']} {rpn.meta['layer']} maps, "
                           f"not {arch} {layer} (set regions.arch / regions.layer and features.arch / "
                           "features.layer to its trunk, or train a head for yours with instar train-proposals)")
    return rpn


# ----------------------------------------------------------------------------- stage entry


@REGIONS.register("rpn")
class RPNProposals(RegionsStage):
    """Learned proposals: an RPN head (3x3 conv, objectness + box regression over 3 scales x 3 ratios) on the frozen trunk's map, NMS, top-k (Deep Image Retrieval sec. 3.2)."""
    needs_trunk = True

    def __init__(self, *, weights: str = DEFAULT_WEIGHTS, arch: str = "efficientnet-lite0", layer: str = "stride32",
                 top: Annotated[int, Range(ge=1)] = 300, nms: Annotated[float, Range(gt=0, le=1)] = 0.7):
        if top < 1:
            raise ValueError(f"regions.top = {top}: must be at least 1")
        if not 0.0 < nms <= 1.0:
            raise ValueError(f"regions.nms = {nms}: an IoU threshold in (0, 1]")
        self.weights, self.arch, self.layer, self.top, self.nms = weights, arch, layer, top, nms
        self.rpn = load_rpn(weights, arch=arch, layer=layer)

    def __call__(self, fmap, geometry: MapGeometry, image=None) -> Regions:
        boxes, scores = self.rpn.propose(torch.as_tensor(fmap), geometry, self.top, self.nms)
        W, H = geometry.image_size
        pixels = np.concatenate([np.array([[0, 0, W, H]], np.float32), boxes])
        return Regions.from_pixels(pixels, geometry, np.concatenate([np.ones(1, np.float32), scores]))
