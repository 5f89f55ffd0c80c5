"""RootSIFT local features (instar.extract.features.local): the transform by hand, and OpenCV's keypoints through it."""
import numpy as np
import pytest
from PIL import Image

from instar.extract.features.local import LocalFeatures, RootSIFTFeatures, rootsift, rootsift_from_sift


def test_rootsift_is_the_square_root_of_the_l1_normalised_sift():
    sift = np.array([[4, 0, 12, 0], [1, 1, 1, 1], [0, 0, 0, 0]], np.float32)
    expected = np.array([[0.5, 0, np.sqrt(0.75), 0], [0.5, 0.5, 0.5, 0.5], [0, 0, 0, 0]], np.float32)
    out = rootsift_from_sift(sift)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Hellinger: the inner product of RootSIFT vectors is the Bhattacharyya coefficient of the L1-normalised SIFTs
    p, q = sift[0] / sift[0].sum(), sift[1] / sift[1].sum()
    assert float(out[0] @ out[1]) == pytest.approx(float(np.sqrt(p * q).sum()), abs=1e-6)
    assert np.allclose(np.linalg.norm(out[:2], axis=1), 1.0)


def checkerboard(size=160, cell=20):
    y, x = np.mgrid[:size, :size]
    board = (((x // cell) + (y // cell)) % 2 * 255).astype(np.uint8)
    board[40:70, 90:140] = 128  # a grey patch breaks the symmetry
    return Image.fromarray(board).convert("RGB")


def test_keypoints_on_texture_none_on_a_blank_image_and_the_cap():
    points, desc = rootsift(checkerboard(), max_keypoints=0)
    assert len(points) > 10 and points.shape[1] == 4 and desc.shape == (len(points), 128)
    assert desc.dtype == np.float32 and np.allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-4)
    assert (points[:, 0] >= 0).all() and (points[:, 0] < 160).all() and (points[:, 1] < 160).all()
    capped, _ = rootsift(checkerboard(), max_keypoints=5)
    assert len(capped) == 5
    blank_points, blank_desc = rootsift(Image.new("RGB", (64, 64), (200, 200, 200)))
    assert blank_points.shape == (0, 4) and blank_desc.shape == (0, 128)


def test_the_features_stage_gives_local_features_and_a_region_map_of_its_stride():
    stage = RootSIFTFeatures(max_keypoints=50)
    image = checkerboard()
    local = stage(image)
    assert isinstance(local, LocalFeatures) and len(local) == len(local.points) <= 50
    fmap, stride = stage.region_map(image, local)
    assert stride == 16 and tuple(fmap.shape[-2:]) == (10, 10)  # 160 px / 16 px cells
