import numpy as np
import pytest
import torch

from instar.extract.whitening import PCAWhitening
from instar.core.norms import l2n, power_normalize


def correlated(n=4000, d=12, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ a + rng.normal(size=d) * 5


def test_whitening_makes_fitted_covariance_identity():
    x = correlated()
    w = PCAWhitening().fit(x)
    y = w.transform(x.astype(np.float32))
    cov = np.cov(y.astype(np.float64), rowvar=False)
    assert np.allclose(cov, np.eye(12), atol=1e-3)
    assert np.allclose(y.mean(axis=0), 0, atol=1e-3)
    # and the raw data was far from white
    assert not np.allclose(np.cov(x, rowvar=False), np.eye(12), atol=0.5)


def test_reduced_dimension_keeps_top_variance_directions():
    x = correlated()
    w = PCAWhitening(dim=4).fit(x)
    y = w.transform(x.astype(np.float32))
    assert y.shape == (4000, 4)
    assert np.allclose(np.cov(y.astype(np.float64), rowvar=False), np.eye(4), atol=1e-3)
    assert np.all(np.diff(w.eigenvalues_) <= 0)


def test_rank_deficient_training_drops_null_directions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 20))  # 5 samples span at most 4 centred directions
    w = PCAWhitening(dim=20).fit(x)
    assert w.dim_ == 4
    assert np.isfinite(w.transform(x.astype(np.float32))).all()


def test_torch_and_numpy_transforms_agree_and_state_round_trips():
    x = correlated(500, 6)
    w = PCAWhitening().fit(x)
    w2 = PCAWhitening.from_state(w.state())
    t = w2.transform(torch.tensor(x[:3], dtype=torch.float32)).numpy()
    assert np.allclose(t, w.transform(x[:3].astype(np.float32)), atol=1e-4)


def test_bad_training_data():
    with pytest.raises(ValueError, match="at least 2"):
        PCAWhitening().fit(np.ones((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        PCAWhitening().fit(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="zero variance"):
        PCAWhitening().fit(np.ones((10, 3)))


def test_l2_and_power_normalisation():
    v = np.array([[3.0, -4.0], [0.0, 0.0]])
    assert np.allclose(l2n(v), [[0.6, -0.8], [0.0, 0.0]])
    assert np.allclose(power_normalize(np.array([4.0, -9.0])), [2.0, -3.0])
    assert torch.allclose(l2n(torch.tensor([3.0, 4.0])), torch.tensor([0.6, 0.8]))
