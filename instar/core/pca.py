"""Principal component analysis: the one eigen-decomposition PCA-whitening and the PCA-based codings share."""
from __future__ import annotations

import numpy as np


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D) vectors, N >= 2 -> mean (D,), eigenvalues (D,) descending and their directions (D, D) as columns,
    all float64, from the sample covariance (divided by N - 1)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    eigval, eigvec = np.linalg.eigh(xc.T @ xc / max(x.shape[0] - 1, 1))
    order = np.argsort(eigval)[::-1]
    return mean, eigval[order], eigvec[:, order]
