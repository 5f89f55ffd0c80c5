"""The k-means codebook (instar.core.codebook): construct inputs, run, compare with values computed by hand."""
import numpy as np
import pytest

from instar.core.codebook import Codebook, sample_descriptors


def clusters(rng, centres, n=50, spread=0.01):
    return np.concatenate([c + spread * rng.standard_normal((n, len(c))) for c in centres]).astype(np.float32)


def test_two_separated_clusters_give_their_means_and_assignments():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0]], np.float32)
    x = clusters(rng, centres)
    cb = Codebook(k=2, niter=20, seed=1).fit(x)
    truth = np.repeat(np.arange(2), 50)
    words = cb.assign(x)
    # each true cluster lands on one word, and its centroid is the cluster's mean (k-means' fixed point)
    for c in range(2):
        assert len(set(words[truth == c].tolist())) == 1
        w = words[truth == c][0]
        np.testing.assert_allclose(cb.centroids[w], x[truth == c].mean(axis=0), atol=1e-4)
    assert len(set(words.tolist())) == 2
    # a new point goes to its nearest centroid by L2
    probe = np.array([[9.0, 1.0], [0.4, 8.0]], np.float32)
    expected = np.argmin(((probe[:, None, :] - cb.centroids[None]) ** 2).sum(-1), axis=1)
    assert cb.assign(probe).tolist() == expected.tolist()
    assert cb.assign(np.zeros((0, 2), np.float32)).shape == (0,)


def test_state_round_trip_and_errors():
    rng = np.random.default_rng(2)
    cb = Codebook(k=4, seed=0).fit(rng.standard_normal((100, 8)).astype(np.float32))
    again = Codebook.from_state(cb.state())
    assert again.k == 4 and np.array_equal(again.centroids, cb.centroids)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    assert np.array_equal(again.assign(x), cb.assign(x))
    with pytest.raises(ValueError, match="a codebook of 4 words needs at least 4 training descriptors, got 3"):
        Codebook(k=4).fit(np.zeros((3, 8), np.float32))
    with pytest.raises(RuntimeError, match="before fit"):
        Codebook(k=4).assign(x)


def test_sample_descriptors_caps_each_image_at_total_over_images():
    sets = [np.full((n, 2), i, np.float32) for i, n in enumerate((10, 3, 40))]
    out = sample_descriptors(sets, 3, np.random.default_rng(0), total=24)  # 24 // 3 = 8 per image at most
    per_image = [int((out[:, 0] == i).sum()) for i in range(3)]
    assert per_image == [8, 3, 8]
    # at least `minimum` per image, whatever the total
    out = sample_descriptors(sets, 3, np.random.default_rng(0), total=3, minimum=5)
    assert [int((out[:, 0] == i).sum()) for i in range(3)] == [5, 3, 5]
    # drawn without replacement, reproducibly from the generator
    a = sample_descriptors([np.arange(20, dtype=np.float32)[:, None]], 1, np.random.default_rng(7), total=6)
    b = sample_descriptors([np.arange(20, dtype=np.float32)[:, None]], 1, np.random.default_rng(7), total=6)
    assert np.array_equal(a, b) and len(set(a[:, 0].tolist())) == 6
