"""Boxes [x0, y0, x1, y1] in pixels: intersection over union, and parsing a box the user typed."""
from __future__ import annotations

import math

import numpy as np
import torch


def paired_iou(a, b) -> np.ndarray:
    """IoU of corresponding boxes of (n, 4) and (n, 4) -> (n,) float64 (0 where the union is empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) IoU of every box of `a` (N, 4) with every box of `b` (M, 4) (torch, for training losses)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x0,y0,x1,y1' -> four finite floats; ValueError saying what is wrong (the caller names the field)."""
    try:
        values = [float(p) for p in str(text).split(",")]
    except ValueError:
        raise ValueError("expected four numbers x0,y0,x1,y1") from None
    if len(values) != 4:
        raise ValueError(f"expected four numbers x0,y0,x1,y1, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("every value must be a finite number")
    return tuple(values)  # type: ignore[return-value]
