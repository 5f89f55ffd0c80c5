"""Detect-to-Retrieve pieces end to end: deep local features, spatial verification of a known affine warp, and the
four presets through `instar index` / `search --json` / `eval` on a tiny folder."""
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from instar.cli import app
from instar.core.boxes import paired_iou as box_iou

from conftest import skimage_photo


def test_deep_local_features_positions_attention_and_whitening():
    from instar.extract.features.deep_local import DeepLocalFeatures, map_positions
    # cell centres: a 2x3 map of a 96x64 input at scale 0.5 of a 192x128 image -> centres 32 px apart, first at 16
    xy = map_positions((2, 3), (96, 64), (0.5, 0.5))
    assert xy[:3, 0].tolist() == [32.0, 96.0, 160.0] and xy[0].tolist() == [32.0, 32.0] and xy[3, 1] == 96.0
    im = Image.fromarray(skimage_photo("astronaut")).resize((256, 256))
    f = DeepLocalFeatures(scales=(1.0, 0.5), max_features=30, dim=8)
    with pytest.raises(RuntimeError, match="fitted"):
        f(im)
    f.fit_extractor(None, [im, im.rotate(90)], np.random.default_rng(0), lambda x, **k: x)
    local = f(im)
    assert local.descriptors.shape == (30, 8) and np.allclose(np.linalg.norm(local.descriptors, axis=1), 1, atol=1e-5)
    assert np.all(np.diff(local.scores) <= 0)  # the strongest activations, best first
    assert np.all((local.points[:, :2] >= 0) & (local.points[:, :2] < 256))
    assert set(np.round(local.points[:, 2]).tolist()) <= {32.0, 64.0}  # cell sides at scale 1 and 1/2 (stride 32)
    g = DeepLocalFeatures(scales=(1.0, 0.5), max_features=30, dim=8)
    g.load_state(f.state())
    assert np.allclose(g(im).descriptors, local.descriptors, atol=1e-5)
    with pytest.raises(ValueError, match="more than the 320 channels"):
        _ = DeepLocalFeatures(dim=400).model


def _warped_scene(tmp_path):
    """The astronaut photo, and a copy warped by a known affine map A pasted over another photo."""
    src = skimage_photo("astronaut")[::2, ::2].copy()  # 256 x 256
    # rotation by 3 degrees, anisotropic scaling 0.85 x 0.75, a small shear, a shift: a general affine map
    angle = np.deg2rad(3)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    A = np.hstack([rot @ np.array([[0.85, 0.05], [0.0, 0.75]]), np.array([[70.0], [40.0]])])
    W, H = 380, 340
    background = np.asarray(Image.fromarray(skimage_photo("coffee")).resize((W, H)))
    warped = cv2.warpAffine(src, A, (W, H))
    mask = cv2.warpAffine(np.full(src.shape[:2], 255, np.uint8), A, (W, H)) > 0
    scene = np.where(mask[..., None], warped, background)
    folder = tmp_path / "db"
    folder.mkdir()
    Image.fromarray(scene).save(folder / "scene.png")
    for name in ("chelsea", "rocket", "hubble_deep_field"):
        im = Image.fromarray(skimage_photo(name)[..., :3])
        im.thumbnail((380, 380))
        im.save(folder / f"{name}.png")
    query = tmp_path / "astronaut.png"
    Image.fromarray(src).save(query)
    return folder, query, A


def test_spatial_verification_finds_a_known_affine_warp_and_localises_it(tmp_path):
    from instar import Index, list_images, search
    from instar.presets import load_preset
    from instar.search import Database, Query
    from instar.search.rerank.sp import tentative_matches, verify

    folder, query, A = _warped_scene(tmp_path)
    preset = load_preset("asmk-rootsift").with_overrides({
        "pooling.binary": "true", "pooling.points": "true", "pooling.k": "32", "features.max_keypoints": "800",
        "image.max_size": "512", "rerank.method": "sp", "rerank.threshold": "4"})
    files = list_images(folder)
    with Index.create(tmp_path / "sp.index", preset, train=files) as index:
        index.add(files, root=folder)
        box = (20.0, 20.0, 236.0, 236.0)  # most of the query photo: its features reach the box edges
        hits = search(index, query, box=box, k=4)
        assert hits[0].name == "scene.png" and hits[0].score >= 15  # inliers + filter score
        corners = np.array([[box[0], box[1], 1], [box[2], box[1], 1], [box[0], box[3], 1], [box[2], box[3], 1]])
        mapped = corners @ A.T
        truth = [mapped[:, 0].min(), mapped[:, 1].min(), mapped[:, 0].max(), mapped[:, 1].max()]
        assert box_iou(np.array(hits[0].box), np.array(truth))[0] >= 0.8
        # the RANSAC model is A (the query crop's pixels start at the box corner)
        db = Database.from_index(index)
        q = Query(index.extractor, query, box)
        stage = index.extractor.pooling
        words = stage.words_of(q.features)
        codes = (q.features.descriptors - stage.codebook.centroids[words])
        row = hits[0].row
        snap = db.snapshot
        from instar.core.binary import pack_signs
        qi, di = tentative_matches(words, pack_signs(codes), np.asarray(snap.get("local_words", row)),
                                   np.asarray(snap.get("local_codes", row)), 128, 0.25)
        n, M, _ = verify(q.features.points[qi, :2], np.asarray(snap.get("local_xy", row))[di], threshold=4)
        assert n >= 15
        shift = np.array([[1, 0, box[0]], [0, 1, box[1]], [0, 0, 1]])
        assert np.allclose(M[:, :2], (A @ shift)[:, :2], atol=0.03)
        assert np.allclose(M[:, 2], (A @ shift)[:, 2], atol=4.0)


FAST = {
    "asmk-rootsift": ["pooling.k=8", "features.max_keypoints=200", "image.max_size=200", "train.max_images=6"],
}
LITE = ["pooling.k=8", "features.max_features=60", "features.dim=16", "features.scales=1", "image.max_size=160",
        "train.max_images=6"]
for _name in ("asmk-star-lite0", "d2r-r-asmk-star-lite0", "d2r-r-asmk-star-lite0-sp"):
    FAST[_name] = LITE + (["regions.top=3"] if "d2r" in _name else [])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
        im = Image.fromarray(skimage_photo(name)[..., :3])
        im.thumbnail((200, 200))
        im.save(root / "images" / f"{name}.jpg", quality=92)
    w, h = Image.open(root / "images" / "coffee.jpg").size
    spec = {"database": "images", "queries": [
        {"name": "coffee", "image": "images/coffee.jpg", "box": [w * 0.1, h * 0.1, w * 0.9, h * 0.9],
         "positives": ["coffee.jpg"]},
        {"name": "astronaut", "image": "images/astronaut.jpg", "positives": ["astronaut.jpg"]}]}
    (root / "queries.json").write_text(json.dumps(spec))
    return root


@pytest.mark.parametrize("preset", sorted(FAST))
def test_presets_run_end_to_end(preset, tiny_folder, tmp_path):
    sets = [a for s in FAST[preset] for a in ("--set", s)]
    runner = CliRunner()
    out = tmp_path / "x.index"
    r = runner.invoke(app, ["index", str(tiny_folder / "images"), "--out", str(out), "--preset", preset, "-q", *sets])
    assert r.exit_code == 0, r.output
    assert "6 images (added 6" in r.output
    r = runner.invoke(app, ["search", str(out), str(tiny_folder / "images" / "astronaut.jpg"), "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and hits[0]["name"] == "astronaut.jpg" and len(hits[0]["box"]) == 4
    r = runner.invoke(app, ["eval", "folder", "--data", str(tiny_folder), "--preset", preset,
                            "--train", str(tiny_folder / "images"), "--workdir", str(tmp_path / "w"), "-q", *sets])
    assert r.exit_code == 0, r.output
    assert f"preset {preset}" in r.output and "mAP" in r.output
    shutil.rmtree(tmp_path / "w")
