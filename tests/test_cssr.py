"""CS-SR (Salvador et al. sec. 3.2-3.3): a classifier fine-tuned on the query boxes re-ranks and localises, on a tiny
synthetic collection of real photos pasted into noise canvases; the classifier file's errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import skimage_photo
from instar.cli import app
from instar.evaluation.datasets import Dataset, Query
from instar.evaluation.evaluate import evaluate
from instar.extract.features.efficientnet import load_efficientnet_lite
from instar.search.rerank.cs_sr import load_cssr
from instar.learning.cssr import query_objects, train_cssr
from instar.learning.train import save_model
from instar.presets import PresetError, load_preset

runner = CliRunner()
CANVAS = (256, 192)


def paste(name: str, box, seed: int) -> Image.Image:
    """Photo `name` resized into `box` of a blurred-noise canvas."""
    rng = np.random.default_rng(seed)
    canvas = Image.fromarray(rng.integers(0, 255, (CANVAS[1], CANVAS[0], 3), dtype=np.uint8)).resize(
        (CANVAS[0] // 8, CANVAS[1] // 8)).resize(CANVAS, Image.Resampling.BILINEAR)
    x0, y0, x1, y1 = box
    canvas.paste(Image.fromarray(skimage_photo(name)[..., :3]).resize((x1 - x0, y1 - y0)), (x0, y0))
    return canvas


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Two query objects (astronaut, coffee) with boxes; a database of each pasted twice elsewhere and two
    distractors (chelsea, rocket); the true boxes of the positives."""
    root = tmp_path_factory.mktemp("cssr")
    queries, database, gnd, boxes = [], [], [], []
    layout = {"astronaut": [(0, 0, 128, 96), (128, 96, 256, 192)], "coffee": [(64, 32, 192, 128), (0, 96, 128, 192)],
              "chelsea": [(128, 0, 256, 96)], "rocket": [(64, 96, 192, 192)]}
    for name, places in layout.items():
        for k, box in enumerate(places):
            path = root / f"db_{name}_{k}.png"
            paste(name, box, seed=len(database)).save(path)
            database.append((path, name, box))
    for qi, name in enumerate(("astronaut", "coffee")):
        path = root / f"query_{name}.png"
        qbox = (64, 48, 192, 144)  # a quarter of the image: larger boxes around it are background
        paste(name, qbox, seed=100 + qi).save(path)
        positives = [i for i, (_, n, _) in enumerate(database) if n == name]
        queries.append(Query(name=f"query_{name}", image=path, box=tuple(float(v) for v in qbox)))
        gnd.append({"ok": np.array(positives), "junk": np.zeros(0, np.int64)})
        boxes.append({i: tuple(float(v) for v in database[i][2]) for i in positives})
    ds = Dataset(name="pasted", kind="folder", root=root, database=[p for p, _, _ in database], queries=queries,
                 ground_truth=gnd, positive_boxes=boxes)
    return ds


PRESET = {"image.max_size": "256", "regions.method": "sliding", "region_pooling.method": "max",
          "whitening.method": "none"}


def test_cssr_ranks_the_right_images_first_and_localises_them(collection, tmp_path):
    objects, names = query_objects(collection)
    assert [o.label for o in objects] == [1, 2] and len(names) == 2  # no shared positives: two objects
    preset = load_preset("ipa-sum-lite0").with_overrides(PRESET)
    ckpt = train_cssr(collection, preset, strategy=1, steps=150, echo=lambda line: None)
    assert ckpt["meta"]["query_boxes_own_class"] == 2
    weights = tmp_path / "cssr1.pth"
    save_model(ckpt, weights)
    result = evaluate(collection, preset, overrides={"rerank.method": "cs-sr", "rerank.weights": str(weights)},
                      workdir=tmp_path)
    assert result.report.metrics["all"]["mp@1"] == 1.0  # each query's first hit shows its object
    assert result.report.metrics["all"]["map"] == 1.0   # both positives above the distractors
    assert result.localisation["hits"] == 4 and result.localisation["iou50"] == 1.0  # its best region is the object
    # the same index re-ranked class-agnostically, for comparison (shared index: rerank is search-time)
    ca = evaluate(collection, preset, overrides={"rerank.method": "ca-sr"}, workdir=tmp_path)
    assert ca.localisation["hits"] == 4

    # strategy #2 also fine-tunes the last trunk stage; its file is the trunk's checkpoint too
    ckpt2 = train_cssr(collection, preset, strategy=2, train_blocks=1, steps=4, echo=lambda line: None)
    path2 = tmp_path / "cssr2.pth"
    save_model(ckpt2, path2)
    model, extras = load_efficientnet_lite("efficientnet-lite0", str(path2), "head")
    assert "cssr.fc1.weight" in extras and extras["meta"]["strategy"] == 2
    base, _ = load_efficientnet_lite("efficientnet-lite0", "imagenet", "head")
    assert not torch.equal(model._conv_head.weight, base._conv_head.weight)  # the last stage learned
    assert torch.equal(model._blocks[0]._depthwise_conv.weight, base._blocks[0]._depthwise_conv.weight)
    head, meta = load_cssr(str(path2))
    assert meta["classes"] == names


def test_cssr_bad_input(collection, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not torch")
    with pytest.raises(ValueError, match="garbage.pth is not a readable torch checkpoint"):
        load_cssr(str(garbage))
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="other.pth: not a CS-SR classifier"):
        load_cssr(str(other))
    with pytest.raises(ValueError, match="needs rerank.weights"):
        load_cssr("")
    # CS-SR reads RPA-max region descriptors: a preset storing none, or sum-pooled ones, is refused
    with pytest.raises(PresetError, match="compares regions"):
        load_preset("ipa-sum-lite0").with_overrides({"rerank.method": "cs-sr"})
    with pytest.raises(PresetError, match="reads max-pooled region descriptors"):
        load_preset("ipa-sum-lite0").with_overrides({**PRESET, "region_pooling.method": "sum", "rerank.method": "cs-sr"})
    # the command: a dataset without query boxes, and a garbage classifier in an evaluation, exit 2
    r = runner.invoke(app, ["train-cs-sr", "smvs-dvd-covers-test", "--data", str(tmp_path / "nowhere"), "--out",
                            str(tmp_path / "c.pth")])
    assert r.exit_code == 2 and "error:" in r.output and "nowhere" in r.output
    no_boxes = Dataset(name="noboxes", kind="folder", root=collection.root, database=collection.database,
                       queries=[Query(q.name, q.image, None) for q in collection.queries],
                       ground_truth=collection.ground_truth)
    with pytest.raises(ValueError, match="no query has a box"):
        query_objects(no_boxes)
