import math

import numpy as np
import pytest
import torch

from instar.extract.pooling import functional as pooling
from instar.extract.regions import rmac_regions, whole_region
from instar.core.norms import l2n


@pytest.fixture
def fmap():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 6, 9, generator=g) * 3.0


def test_gem_p1_equals_spoc_without_prior(fmap):
    assert torch.allclose(pooling.gem(fmap, p=1.0), pooling.spoc(fmap, use_center_prior=False), atol=1e-6)


def test_gem_large_p_approaches_mac(fmap):
    mac = pooling.mac(fmap)
    errs = [float((pooling.gem(fmap, p=p) - mac).abs().max() / mac.max()) for p in (3.0, 30.0, 300.0, 3000.0)]
    assert errs == sorted(errs, reverse=True)  # monotone approach
    assert errs[-1] < 2e-3 and errs[0] > 1e-2
    # bound: mean(x^p) >= max^p / (H W), so 1 - gem/mac <= 1 - (1/(H W))^(1/p), per channel
    for p in (3.0, 300.0):
        rel = 1 - pooling.gem(fmap, p=p) / mac
        assert (rel >= -1e-6).all() and (rel <= 1 - (1 / 54) ** (1 / p) + 1e-6).all()
    assert torch.isfinite(pooling.gem(fmap * 1e3, p=3000.0)).all()  # no overflow for large activations


def test_gem_p2_by_hand():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    # sqrt((1 + 4 + 9 + 16) / 4) = sqrt(7.5)
    assert math.isclose(float(pooling.gem(x, p=2.0)[0]), math.sqrt(7.5), rel_tol=1e-6)


def test_spoc_center_prior_favours_the_centre():
    x = torch.zeros(2, 7, 7)
    x[0, 3, 3] = 1.0  # channel 0 fires at the centre
    x[1, 0, 0] = 1.0  # channel 1 fires in a corner
    v = pooling.spoc(x)
    assert v[0] > 10 * v[1]
    w = pooling.center_prior(7, 7)
    # sigma = 7/2/3; corner cell centre is 3 cells away in x and y
    sigma = 7 / 6
    assert math.isclose(float(w[0, 0]), math.exp(-(9 + 9) / (2 * sigma**2)), rel_tol=1e-5)


def test_rmac_single_whole_region_equals_mac(fmap):
    r = pooling.rmac(fmap, whole_region(fmap.shape[1], fmap.shape[2]))
    assert torch.allclose(r, l2n(pooling.mac(fmap)), atol=1e-6)


def test_rmac_sums_normalised_region_vectors(fmap):
    regions = np.array([[0, 0, 4, 4], [5, 2, 9, 6]])
    a = l2n(fmap[:, 0:4, 0:4].amax(dim=(1, 2)))
    b = l2n(fmap[:, 2:6, 5:9].amax(dim=(1, 2)))
    assert torch.allclose(pooling.rmac(fmap, regions), l2n(a + b), atol=1e-6)
    # a whitening hook is applied per region, before the sum
    double_first = lambda v: v * torch.tensor([2.0] + [1.0] * 7)
    a2, b2 = l2n(double_first(a)), l2n(double_first(b))
    assert torch.allclose(pooling.rmac(fmap, regions, double_first), l2n(a2 + b2), atol=1e-6)


def test_crow_by_hand():
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    # S = sum over channels = [[2,1],[1,1]], ||S||_2 = sqrt(7); S' = sqrt(S / sqrt 7)
    s = torch.sqrt(torch.tensor([[2.0, 1.0], [1.0, 1.0]]) / math.sqrt(7))
    # Q = [0.25, 1.0]; omega_k = log(1.25 / Q_k)
    omega = torch.log(torch.tensor([1.25 / 0.25, 1.25 / 1.0]))
    expected = torch.stack([(x[0] * s).sum(), (x[1] * s).sum()]) * omega
    assert torch.allclose(pooling.crow(x), expected, atol=1e-5)


def test_vlad_by_hand():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    desc = np.array([[1.0, 0.0], [0.0, 1.0], [11.0, 0.0]], dtype=np.float32)
    assign = np.array([0, 0, 1])
    raw = pooling.vlad(desc, centroids, assign, power=1.0, intra=False)
    # residual sums: word 0 -> (1, 1), word 1 -> (1, 0); stacked (1,1,1,0) / sqrt(3)
    assert np.allclose(raw, np.array([1, 1, 1, 0]) / math.sqrt(3), atol=1e-6)
    intra = pooling.vlad(desc, centroids, assign, power=1.0, intra=True)
    assert np.allclose(intra, np.array([1 / math.sqrt(2), 1 / math.sqrt(2), 1, 0]) / math.sqrt(2), atol=1e-6)
    empty = pooling.vlad(np.zeros((0, 2), np.float32), centroids, np.zeros(0, int))
    assert empty.shape == (4,) and not empty.any()


def test_region_mac_matches_slices(fmap):
    regions = rmac_regions(6, 9, levels=3)
    out = pooling.region_mac(fmap, regions)
    for (x0, y0, x1, y1), v in zip(regions, out):
        assert torch.equal(v, fmap[:, y0:y1, x0:x1].amax(dim=(1, 2)))
