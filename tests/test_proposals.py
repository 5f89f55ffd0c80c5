"""Region proposals (sliding windows, selective search, the learned RPN) and box estimation by matching."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import skimage_photo
from instar.cli import app
from instar.extract.features.cnn import WeightsError
from instar.core.boxes import paired_iou as box_iou
from instar.tools.matching import estimate_box, read_boxes_json, MatchingError
from instar.extract.regions import MapGeometry
from instar.extract.regions.rpn import DEFAULT_WEIGHTS, RPNHead, anchor_shapes, decode, encode, grid_anchors, load_rpn, nms, packaged_path, PACKAGED_RPN
from instar.learning.rpn import CachedMap, anchor_labels, train_head
from instar.extract.regions.selective_search import selective_search
from instar.extract.regions.sliding import sliding_windows, windows_per_side
from instar.core.registry import REGIONS
from instar.core.registry import SECTIONS  # noqa: F401  (registers the entries)

runner = CliRunner()


def photo(name: str, side: int) -> Image.Image:
    im = Image.fromarray(skimage_photo(name)[..., :3])
    im.thumbnail((side, side))
    return im


def warped(image: Image.Image, corners, canvas: tuple[int, int], seed: int = 0) -> tuple[Image.Image, list[float]]:
    """`image` warped so its corners land on `corners` inside a textured canvas (W, H); its true box."""
    W, H = image.size
    src = np.float32([[0, 0], [W, 0], [W, H], [0, H]])
    dst = np.float32(corners)
    M = cv2.getPerspectiveTransform(src, dst)
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 255, (canvas[1], canvas[0], 3), dtype=np.uint8), (0, 0), 3)
    out = cv2.warpPerspective(np.asarray(image), M, canvas, dst=background.copy(), borderMode=cv2.BORDER_TRANSPARENT)
    box = [float(dst[:, 0].min()), float(dst[:, 1].min()), float(dst[:, 0].max()), float(dst[:, 1].max())]
    return Image.fromarray(out), box


# ----------------------------------------------------------------------------- sliding windows


def test_sliding_window_counts_match_the_papers_on_4_by_3_maps():
    # DRH reports ~21/36/40/60 windows for lambda 0.4/0.5/0.6/0.7 (4:3 Oxford photos); a 1024x768 image gives a
    # 32x24 stride-32 map
    for lam, expected in ((0.4, 21), (0.5, 36), (0.6, 40), (0.7, 60)):
        assert len(sliding_windows(24, 32, lam)) == expected
        assert len(sliding_windows(32, 24, lam)) == expected  # portrait: the same, transposed
    assert [windows_per_side(k, 0.6) for k in (1, 2, 3)] == [1, 3, 6]


def test_sliding_windows_whole_map_first_inside_and_unique():
    for h, w in ((24, 32), (15, 20), (16, 16), (3, 4), (1, 1), (2, 9)):
        r = sliding_windows(h, w, 0.6)
        assert r[0].tolist() == [0, 0, w, h]
        assert (r[:, 0] >= 0).all() and (r[:, 1] >= 0).all() and (r[:, 2] <= w).all() and (r[:, 3] <= h).all()
        assert (r[:, 2] > r[:, 0]).all() and (r[:, 3] > r[:, 1]).all()
        assert len({tuple(b) for b in r.tolist()}) == len(r)
    # windows of a side are spread from border to border: the half-width ones start at 0 and end at the edge
    r = sliding_windows(24, 32, 0.6)
    half = r[(r[:, 2] - r[:, 0] == 16) & (r[:, 3] - r[:, 1] == 24)]
    assert half[:, 0].tolist() == [0, 8, 16]


def test_sliding_aspect_filter_drops_the_thin_third_of_the_short_side():
    landscape = sliding_windows(24, 32, 0.6, th=0.8)
    heights = set((landscape[:, 3] - landscape[:, 1]).tolist())
    assert heights == {24, 12}  # Hc/3 = 8 dropped (H/W = 0.75 <= th)
    assert set((landscape[:, 2] - landscape[:, 0]).tolist()) == {32, 16, 11}
    unfiltered = sliding_windows(24, 32, 0.6, th=0.5)
    assert len(unfiltered) == 100 and 8 in set((unfiltered[:, 3] - unfiltered[:, 1]).tolist())
    assert len(sliding_windows(16, 16, 0.6, th=0.8)) == 100  # square: nothing to filter
    # the filter reads the image's aspect, not the map's: a 1024x1000 image on a (say) 32x24 map keeps all
    assert len(sliding_windows(24, 32, 0.6, th=0.8, aspect=1024 / 1000)) == 100
    with pytest.raises(ValueError, match="overlap"):
        sliding_windows(24, 32, 1.0)


def test_sliding_entry_pixels_are_cells_times_stride_clipped():
    geometry = MapGeometry.of((1000, 700), (32, 22), 32)  # ceil(1000/32) = 32, ceil(700/32) = 22
    regions = REGIONS.build("sliding", overlap=0.5)(torch.zeros(4, 22, 32), geometry)
    assert len(regions) == 36
    expected = np.minimum(regions.cells * 32, [1000, 700, 1000, 700]).astype(np.float32)
    assert np.array_equal(regions.pixels, expected)
    assert regions.pixels[0].tolist() == [0, 0, 1000, 700]


# ----------------------------------------------------------------------------- selective search


def test_selective_search_whole_image_first_then_at_most_top_boxes_inside():
    image = photo("coffee", 200)
    boxes = selective_search(image, top=25, mode="fast", max_side=128)
    assert 1 <= len(boxes) <= 25
    geometry = MapGeometry.of(image.size, (math.ceil(image.width / 32), math.ceil(image.height / 32)), 32)
    regions = REGIONS.build("selective-search", top=25, max_side=128)(torch.zeros(1, 5, 7), geometry, image)
    assert 2 <= len(regions) <= 26
    W, H = image.size
    assert regions.pixels[0].tolist() == [0, 0, W, H]
    p = regions.pixels
    assert (p[:, 0] >= 0).all() and (p[:, 1] >= 0).all() and (p[:, 2] <= W).all() and (p[:, 3] <= H).all()
    assert (p[:, 2] > p[:, 0]).all() and (p[:, 3] > p[:, 1]).all()
    # boxes found on the 128-px copy are scaled back: some reach past the copy's size
    assert p[1:, 2].max() > 128
    with pytest.raises(ValueError, match="mode"):
        REGIONS.build("selective-search", mode="slow")
    with pytest.raises(ValueError, match="image"):
        REGIONS.build("selective-search")(torch.zeros(1, 5, 7), geometry, None)


# ----------------------------------------------------------------------------- matching


def test_estimate_box_recovers_a_known_homography_and_rejects_unrelated_images():
    reference = photo("astronaut", 320)
    scene, true_box = warped(reference, [(150, 70), (430, 110), (460, 380), (110, 350)], (560, 440))
    est = estimate_box(reference, scene)
    assert est is not None and est.inliers >= 30
    assert box_iou(est.box, true_box) >= 0.9
    inl = estimate_box(reference, scene, mode="inliers")
    assert inl is not None and box_iou(inl.box, true_box) >= 0.5
    # the inliers' box lies within the object's
    assert inl.box[0] >= true_box[0] - 3 and inl.box[2] <= true_box[2] + 3
    assert estimate_box(photo("coffee", 320), scene) is None
    assert estimate_box(reference, photo("chelsea", 320)) is None
    with pytest.raises(ValueError, match="mode"):
        estimate_box(reference, scene, mode="corners")


# ----------------------------------------------------------------------------- RPN pieces


def test_anchors_and_encode_decode_round_trip():
    shapes = anchor_shapes((96, 256, 640), (0.5, 1.0, 2.0))
    assert torch.allclose(shapes[:, 0] * shapes[:, 1], torch.tensor([96.0, 96, 96, 256, 256, 256, 640, 640, 640]) ** 2)
    assert torch.allclose(shapes[:, 1] / shapes[:, 0], torch.tensor([0.5, 1, 2] * 3))
    anchors = grid_anchors(4, 3, (32.0, 32.0), shapes)
    assert anchors.shape == (3 * 4 * 9, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres[0].tolist() == [16, 16] and centres[9].tolist() == [48, 16] and centres[4 * 9].tolist() == [16, 48]
    boxes = torch.tensor([[10.0, 20, 300, 200], [0, 0, 640, 480], [100, 100, 110, 130]]).repeat(36, 1)[:len(anchors)]
    back = decode(anchors, encode(anchors, boxes))
    assert torch.allclose(back, boxes, atol=1e-3)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10], [5, 0, 15, 10]], float)
    scores = np.array([0.5, 0.9, 0.3, 0.1, 0.8])
    # 1 (0.9) suppresses 0 (IoU 0.68) and 3; 4 overlaps 1 by 45/155 = 0.29: kept at 0.5, dropped at 0.25
    assert nms(boxes, scores, 0.5).tolist() == [1, 4, 2]
    assert nms(boxes, scores, 0.25).tolist() == [1, 2]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []
    assert nms(boxes, np.zeros(5), 0.99).tolist() == [0, 1, 2, 4]  # zero scores are kept; identical box 3 is not


def test_anchor_labels_positives_negatives_and_best_anchor():
    shapes = anchor_shapes((64,), (1.0,))
    anchors = grid_anchors(4, 4, (32.0, 32.0), shapes)  # 64x64 anchors centred every 32 px
    gt = torch.tensor([[16.0, 16, 80, 80], [70, 70, 95, 95]])
    labels, matched = anchor_labels(anchors, gt)
    assert labels[5] == 1 and matched[5] == 0    # the anchor centred at (48, 48) is the first box exactly
    assert labels[10] == 1 and matched[10] == 1  # the small box's best anchor (IoU 0.15, < 0.7) is positive
    assert labels[1] == -1                       # IoU 1/3 with the first box: between 0.3 and 0.7, ignored
    assert labels[0] == 0 and labels[15] == 0    # IoU 0.14 and 0.05 at most: background
    assert set(labels.tolist()) <= {-1, 0, 1}


def test_rpn_training_steps_make_the_loss_fall():
    gen = torch.Generator().manual_seed(0)
    shapes = anchor_shapes((24, 48), (0.5, 1.0, 2.0))
    maps = []
    for i in range(2):  # an "object" is a bright patch of feature channels; its box is the patch
        fmap = torch.randn(8, 6, 8, generator=gen) * 0.1
        x0, y0 = 1 + i % 3, 1 + i % 2
        fmap[:4, y0:y0 + 3, x0:x0 + 3] += 2.0
        gt = torch.tensor([[x0 * 8.0, y0 * 8.0, (x0 + 3) * 8.0, (y0 + 3) * 8.0]])
        anchors = grid_anchors(8, 6, (8.0, 8.0), shapes)
        maps.append(CachedMap(f"{i}", fmap, anchors, gt, anchor_labels(anchors, gt)))
    torch.manual_seed(0)
    head = RPNHead(8, 16, len(shapes))
    history = train_head(head, maps, epochs=15, lr=2e-2, images_per_step=1)
    assert history[-1] < 0.5 * history[0], history


# ----------------------------------------------------------------------------- the packaged head


def test_packaged_head_loads_strictly_and_proposes_around_the_cover(shared_data):
    rpn = load_rpn(DEFAULT_WEIGHTS)
    assert rpn.meta["arch"] == "efficientnet-lite0" and rpn.meta["layer"] == "stride32"
    trained = rpn.meta["trained_on"]
    assert trained and all(1 <= int(n.rsplit("/", 1)[1][:3]) <= 50 for n in trained)  # never on 051-100
    assert packaged_path(PACKAGED_RPN).stat().st_size < 3_000_000
    from instar.extract.features.efficientnet import load_efficientnet_lite
    from instar.extract.features.cnn import feature_maps
    model, _ = load_efficientnet_lite("efficientnet-lite0", "imagenet", "stride32")
    name = "Canon/071.jpg"  # a held-out cover
    image = Image.open(shared_data / "smvs-dvd-covers" / "jpg" / name).convert("RGB")
    fmap = feature_maps(model, image)[0]
    geometry = MapGeometry.of(image.size, (fmap.shape[-1], fmap.shape[-2]), 32)
    regions = REGIONS.build("rpn", top=50)(fmap, geometry, image)
    W, H = image.size
    assert 10 <= len(regions) <= 51 and regions.pixels[0].tolist() == [0, 0, W, H]
    p = regions.pixels
    assert (p[:, 0] >= 0).all() and (p[:, 2] <= W).all() and (p[:, 1] >= 0).all() and (p[:, 3] <= H).all()
    assert np.all(np.diff(regions.scores[1:]) <= 0)
    truth = read_boxes_json(packaged_path("x").parent.parent / "data" / "smvs-dvd-covers-boxes.json")[name]
    assert max(box_iou(b, truth) for b in p[1:6]) >= 0.6  # one of the 5 best proposals finds the cover (0.72)
    # a map of another trunk (VGG16: 512 channels) is refused, naming the trunk the head needs
    with pytest.raises(WeightsError, match="efficientnet-lite0"):
        rpn.propose(torch.zeros(512, 4, 4), MapGeometry.of((128, 128), (4, 4), 32))


def test_rpn_weights_errors_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="garbage.pth"):
        load_rpn(str(garbage))
    with pytest.raises(WeightsError, match="missing.pth"):
        load_rpn(str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="packaged"):
        load_rpn("packaged:nope.pth")
    good = torch.load(packaged_path(PACKAGED_RPN), weights_only=True)
    extra = {"state_dict": {**good["state_dict"], "extra.weight": torch.zeros(1)}, "meta": good["meta"]}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="extra.weight"):
        load_rpn(str(tmp_path / "extra.pth"))
    with pytest.raises(WeightsError, match="efficientnet-lite0 stride32 maps, not efficientnet-lite0 stride16"):
        load_rpn(DEFAULT_WEIGHTS, layer="stride16")
    with pytest.raises(WeightsError, match="seed"):
        load_rpn("random:x")
    rpn = load_rpn("random:3")  # an untrained head fits whatever map it first sees
    boxes, scores = rpn.propose(torch.randn(16, 5, 6), MapGeometry.of((190, 160), (6, 5), 32), top=20)
    assert 1 <= len(boxes) <= 20 and len(scores) == len(boxes)


def test_rpn_needs_the_trunk_it_was_trained_on_in_a_preset():
    from instar.presets import PresetError, load_preset
    with pytest.raises(PresetError, match="regions.arch 'efficientnet-lite0'.*features.arch 'vgg16'"):
        load_preset("rmac-vgg16").with_overrides({"regions.method": "rpn", "pooling.method": "rmac"})


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """Two objects, two synthetic views each (real photos warped into textured canvases), and their true boxes;
    also the smvs layout of the same views: Reference/00N.png + Cam/00N.png."""
    root = tmp_path_factory.mktemp("objects")
    truth = {}
    for i, name in enumerate(("astronaut", "coffee")):
        ref = photo(name, 240)
        for j, corners in enumerate(([(40, 30), (250, 50), (260, 230), (30, 210)], [(90, 60), (280, 40), (300, 250), (70, 270)])):
            scene, box = warped(ref, corners, (340, 300), seed=3 * i + j)
            rel = f"by-object/{name}/view{j}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            scene.save(root / rel)
            truth[rel] = box
        (root / "smvs" / "Reference").mkdir(parents=True, exist_ok=True)
        (root / "smvs" / "Cam").mkdir(exist_ok=True)
        ref.save(root / "smvs" / "Reference" / f"00{i + 1}.png")
        (root / "smvs" / "Cam" / f"00{i + 1}.png").write_bytes((root / f"by-object/{name}/view0.png").read_bytes())
        truth[f"smvs/Cam/00{i + 1}.png"] = truth[f"by-object/{name}/view0.png"]
    return root, truth


def test_estimate_boxes_cli_both_layouts(objects, tmp_path):
    root, truth = objects
    out = tmp_path / "boxes.json"
    r = runner.invoke(app, ["estimate-boxes", str(root / "by-object"), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "boxes for 4 of 4 images" in r.output
    boxes = read_boxes_json(out)
    for rel, box in boxes.items():
        assert box_iou(box, truth[f"by-object/{rel}"]) >= 0.5, rel  # inliers mode: inside the object
    raw = json.loads(out.read_text())
    assert raw["astronaut/view0.png"]["inliers"] >= 15 and raw["astronaut/view0.png"]["pairs"] == [1, 1]

    r = runner.invoke(app, ["estimate-boxes", str(root / "smvs"), "--reference-folder", "Reference", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "boxes for 2 of 2 images (plus 2 references" in r.output
    boxes = read_boxes_json(out)
    for i in (1, 2):
        assert box_iou(boxes[f"Cam/00{i}.png"], truth[f"smvs/Cam/00{i}.png"]) >= 0.9  # frame mode
        assert boxes[f"Reference/00{i}.png"] == [0, 0, *Image.open(root / "smvs" / "Reference" / f"00{i}.png").size]


def test_train_proposals_cli_writes_a_head_the_rpn_entry_loads(objects, tmp_path):
    root, truth = objects
    out = tmp_path / "rpn.pth"
    r = runner.invoke(app, ["train-proposals", str(root / "by-object"), "--out", str(out), "--epochs", "2",
                            "--weights", "random:0", "--max-size", "160", "--hidden", "16", "-q"])
    assert r.exit_code == 0, r.output
    assert "epoch   2/2  loss" in r.output and "wrote" in r.output
    entry = REGIONS.build("rpn", weights=str(out), top=10)
    assert entry.rpn.meta["trained_on"] == sorted(n.removeprefix("by-object/") for n in truth if n.startswith("by-object"))
    regions = entry(torch.randn(320, 5, 6), MapGeometry.of((180, 150), (6, 5), 32))
    assert 1 <= len(regions) <= 11
    # a boxes file given directly, filtered by --include; a damaged image is skipped and named
    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "a" / "view0.png").write_bytes((root / "by-object" / "astronaut" / "view0.png").read_bytes())
    (tmp_path / "photos" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a/view0.png": [40, 30, 260, 230], "a/broken.png": [0, 0, 50, 50],
                                 "b/none.png": None, "b/other.png": [1, 1, 9, 9]}))
    r = runner.invoke(app, ["train-proposals", str(tmp_path / "photos"), "--boxes", str(boxes), "--out", str(out),
                            "--epochs", "1", "--weights", "random:0", "--max-size", "128", "--no-flip",
                            "--include", "a/*", "-q"])
    assert r.exit_code == 0, r.output
    assert "training on 2 images" in r.output and "skipped" in r.output and "broken.png" in r.output
    assert torch.load(out, weights_only=True)["meta"]["trained_on"] == ["a/view0.png"]


def test_proposal_commands_refuse_bad_input_with_exit_2(objects, tmp_path):
    root, _ = objects
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00 garbage")
    cases = [
        (["estimate-boxes", str(tmp_path / "nope"), "--out", str(tmp_path / "b.json")], "not a folder"),
        (["estimate-boxes", str(empty), "--out", str(tmp_path / "b.json")], "no sub-folders of images"),
        (["estimate-boxes", str(root / "smvs"), "--reference-folder", "Refs", "--out", str(tmp_path / "b.json")],
         "no reference folder 'Refs'"),
        (["estimate-boxes", str(root / "by-object"), "--mode", "frame", "--out", str(tmp_path / "b.json")],
         "--reference-folder"),
        (["train-proposals", str(tmp_path / "nope"), "--out", str(tmp_path / "r.pth")], "not a folder"),
        (["train-proposals", str(empty), "--out", str(tmp_path / "r.pth")], "no sub-folders of images"),
        (["train-proposals", str(root / "by-object"), "--boxes", str(garbage), "--out", str(tmp_path / "r.pth")],
         "garbage.pth: not JSON"),
        (["train-proposals", str(root / "by-object"), "--weights", str(garbage), "--epochs", "1",
          "--out", str(tmp_path / "r.pth"), "-q"], "garbage.pth is not a readable torch checkpoint"),
        (["index", str(root / "by-object"), "--out", str(tmp_path / "idx"), "--preset", "gem",
          "--set", "features.arch=efficientnet-lite0", "--set", "features.weights=random:0",
          "--set", "regions.method=rpn", "--set", f"regions.weights={garbage}"],
         "garbage.pth is not a readable torch checkpoint"),
    ]
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "error:" in r.output and message in r.output, (args, r.output)
    assert not (tmp_path / "r.pth").exists()
    with pytest.raises(MatchingError, match="not JSON"):
        read_boxes_json(garbage)
