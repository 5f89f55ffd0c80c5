"""Vector normalisations shared by pooling, whitening, coding and search (numpy arrays or torch tensors)."""
from __future__ import annotations

import numpy as np
import torch

EPS = 1e-12


def l2n(x, axis: int = -1):
    """L2-normalise along `axis` (numpy array or torch tensor); zero vectors stay zero."""
    if isinstance(x, torch.Tensor):
        return x / x.norm(dim=axis, keepdim=True).clamp_min(EPS)
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), EPS)


def power_normalize(x, alpha: float = 0.5):
    """Signed power normalisation sign(x)|x|^alpha (Jégou et al.; the survey's 'power-law' step)."""
    if isinstance(x, torch.Tensor):
        return x.sign() * x.abs().pow(alpha)
    x = np.asarray(x, dtype=np.float32)
    return np.sign(x) * np.abs(x) ** alpha
