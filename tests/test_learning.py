"""Learning for retrieval (issue 12): the R-MAC network, ranking losses and mining, `instar train` (folders, CSVs,
unlabelled mining, resuming, the saved model through --weights) and bad input. Tiny real photos and seeded random
trunks where the trained weights are not the point."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import skimage_photo
from instar.cli import app
from instar.extract.extractor import Extractor
from instar.extract.features.efficientnet import load_efficientnet_lite
from instar.learning.data import read_labelled
from instar.learning.losses import ContrastiveLoss, TripletLoss, all_vs_all_map
from instar.learning.mining import components, discount_repeated, mine_groups, shortlist
from instar.learning.rmac_net import RMACNet, cached_view, split_trunk
from instar.learning.train import Item, TrainConfig, Trainer
from instar.presets import load_preset

runner = CliRunner()

# real weights (a random Lite trunk saturates its ReLU6: every region alike), tiny images; the stride-32 tap
# (320 channels) where the preset's head tap (1280) is not the point keeps PCA fits and whitening layers small
SMALL = {"features.weights": "imagenet", "image.max_size": "96", "features.layer": "stride32"}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str, side: int) -> Image.Image:
    im = Image.fromarray(skimage_photo(name)[..., :3])
    im.thumbnail((side, side))
    return im


def view_of(image: Image.Image, seed: int, canvas: int) -> Image.Image:
    """`image` under a random perspective warp on a blurred-noise canvas (a new 'photo' of the same object)."""
    rng = np.random.default_rng(seed)
    W, H = image.size
    s = canvas / max(W, H) * 0.8
    src = np.float32([[0, 0], [W, 0], [W, H], [0, H]])
    base = np.float32([[0, 0], [W * s, 0], [W * s, H * s], [0, H * s]]) + canvas * 0.1
    dst = (base + rng.uniform(-0.06, 0.06, (4, 2)) * canvas).astype(np.float32)
    M = cv2.getPerspectiveTransform(src, dst)
    bg = cv2.GaussianBlur(rng.integers(0, 255, (canvas, canvas, 3), dtype=np.uint8), (0, 0), 3)
    return Image.fromarray(cv2.warpPerspective(np.asarray(image), M, (canvas, canvas), dst=bg.copy(),
                                               borderMode=cv2.BORDER_TRANSPARENT))


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """Four objects (real photos), three warped views each, in one sub-folder per object (JPEG, 128 px)."""
    root = tmp_path_factory.mktemp("objects")
    for i, name in enumerate(PHOTOS):
        (root / name).mkdir()
        src = photo(name, 200)
        for j in range(3):
            view_of(src, 10 * i + j, 128).save(root / name / f"v{j}.jpg", quality=92)
    return root


def small_preset(**extra):
    return load_preset("rmac-lite0").with_overrides({**SMALL, **extra})


# ----------------------------------------------------------------------------- the network


@pytest.mark.parametrize("train_blocks", [0, 2])
def test_network_equals_the_rmac_extractor_at_initialisation(objects, train_blocks):
    ex = Extractor(small_preset(**{"features.layer": "head"}))  # the preset's own tap
    images = [ex.load(p) for p in sorted(objects.rglob("*.jpg"))[:4]]
    for st in ex.learned.values():
        st.fit_extractor(ex, images, np.random.default_rng(0), lambda it, **_: it)
    split = split_trunk(ex.model, "efficientnet-lite0", train_blocks)
    net = RMACNet.from_extractor(ex, split)
    assert len(net.trainable()) == 2 + (len(split.parameters()) if train_blocks else 0)
    for im in images:
        # equal up to float rounding (a trained block runs with gradients on: other oneDNN kernels)
        assert np.allclose(net.embed(cached_view(ex, split, im)).detach().numpy(), ex.describe_image(im), atol=1e-5)
    # the batched embedding (views of equal shapes together) is the same network
    views = [cached_view(ex, split, im) for im in images]
    one_by_one = torch.stack([net.embed(v) for v in views]).detach().numpy()
    assert np.allclose(net.embed_many(views, chunk=3).detach().numpy(), one_by_one, atol=1e-5)


# ----------------------------------------------------------------------------- losses and mining


def test_triplet_loss_and_mining_on_hand_made_embeddings():
    # two objects on the unit circle: a0, a1 close; b0 near a0 (a hard negative), b1 far
    ang = np.radians([0.0, 20.0, 10.0, 180.0])
    E = np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)
    labels = np.array([0, 0, 1, 1])
    loss = TripletLoss()  # m = 0.1
    sq = lambda i, j: float(((E[i] - E[j]) ** 2).sum())  # noqa: E731
    expected = {(a, p, n): 0.5 * max(0.0, 0.1 + sq(a, p) - sq(a, n))
                for a in range(4) for p in range(4) for n in range(4)
                if p != a and labels[p] == labels[a] and labels[n] != labels[a]}
    t = torch.from_numpy(E)
    for (a, p, n), v in expected.items():
        assert loss.losses(t[a:a + 1], t[p:p + 1], t[n:n + 1]).item() == pytest.approx(v, abs=1e-6)
    mined = loss.mine(E, labels, 200, np.random.default_rng(0))
    active = {k for k, v in expected.items() if v > 0}
    assert mined.considered == len(expected) == 8 and mined.active == len(active)
    assert mined.mean_loss == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    drawn = [tuple(r) for r in mined.tuples.tolist()]
    assert len(drawn) == 200 and set(drawn) <= active
    # drawn in proportion to their loss: the hardest triplet most often
    hardest = max(active, key=expected.get)
    assert max(set(drawn), key=drawn.count) == hardest
    # the mean over the tuples is what an update minimises
    assert loss(t, mined.tuples[:4]).item() == pytest.approx(np.mean([expected[d] for d in drawn[:4]]), abs=1e-6)
    # nothing to learn when every negative is far enough
    far = np.array([[1, 0], [1, 0], [-1, 0], [-1, 0]], np.float32)
    assert len(loss.mine(far, labels, 10, np.random.default_rng(0)).tuples) == 0


def test_contrastive_loss_and_mining():
    E = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [-1, 0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    loss = ContrastiveLoss(margin=0.5)
    mined = loss.mine(E, labels, 40, np.random.default_rng(0))
    assert mined.considered == 6
    pos, neg = mined.tuples[mined.tuples[:, 2] == 1], mined.tuples[mined.tuples[:, 2] == 0]
    assert len(pos) == 20 and len(neg) == 20
    assert all(labels[i] == labels[j] for i, j, _ in pos) and all(labels[i] != labels[j] for i, j, _ in neg)
    # only the non-matching pair within the margin (1, 2: squared distance 0.08) has a loss
    assert {(i, j) for i, j, _ in neg} == {(1, 2)}
    t = torch.from_numpy(E)
    assert loss(t, np.array([[1, 2, 0]])).item() == pytest.approx(0.5 * (0.5 - 0.08), abs=1e-5)
    assert loss(t, np.array([[0, 1, 1]])).item() == pytest.approx(0.5 * 0.4, abs=1e-5)


def test_repeated_structure_stops_merging_objects():
    # images 0, 1 show object A, images 2, 3 object B; all four share a background whose keypoint 0..4 (in each
    # image) is an inlier with every other image; the objects' own keypoints (10.., 20..) match only their twin
    bg = np.array([[k, k] for k in range(5)])
    own_a = np.array([[10 + k, 10 + k] for k in range(6)])
    own_b = np.array([[20 + k, 20 + k] for k in range(6)])
    verified = [(0, 1, np.vstack([bg, own_a])), (2, 3, np.vstack([bg, own_b]))]
    verified += [(i, j, bg) for i, j in [(0, 2), (0, 3), (1, 2), (1, 3)]]
    plain = [(i, j, len(idx)) for i, j, idx in verified]
    assert components(4, [e for e in plain if e[2] >= 5]).tolist() == [0, 0, 0, 0]  # one merged "object"
    # background keypoints have 3 partners each: with at most 1 allowed (one other view per object) they drop
    edges = discount_repeated(verified, max_partners=1, min_inliers=5)
    assert edges == [(0, 1, 6), (2, 3, 6)]
    assert components(4, edges).tolist() == [0, 0, 1, 1]
    # allowing 3 partners keeps the background, and the merge
    assert len(discount_repeated(verified, max_partners=3, min_inliers=5)) == 6


def test_all_vs_all_map():
    E = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert all_vs_all_map(E, np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert all_vs_all_map(E, np.array([0, 1, 0, 1])) < 0.6


# ----------------------------------------------------------------------------- training


def test_train_cli_from_a_plain_folder_makes_the_loss_fall_and_its_model_loads_through_weights(objects, tmp_path):
    out = tmp_path / "model.pth"
    args = ["train", str(objects), "--out", str(out), "--train-blocks", "1", "--epochs", "3",
            "--updates-per-epoch", "4", "--mine-every", "4", "--batch", "16", "--lr", "0.05", "--whiten-lr", "0.5",
            "--set", "image.max_size=96", "--set", "features.layer=stride32", "--val", str(objects), "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    history = json.loads(out.with_suffix(".history.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert "epoch 3/3  loss" in r.output and "val mAP" in r.output
    pool = [row["pool_loss"] for row in history[1:]]
    assert pool[-1] < 0.7 * pool[0], pool  # the pool's mean triplet loss falls as it trains
    assert history[-1]["train_map"] >= history[0]["train_map"]

    # the model is the trunk's own checkpoint plus its whitening: strict load through the trunk's loader
    model, extras = load_efficientnet_lite("efficientnet-lite0", str(out), "stride32")
    assert extras["whiten.weight"].shape[1] == 320 and extras["whiten.shift"].shape == (320,)
    assert extras["meta"]["train_blocks"] == 1 and extras["meta"]["whitens"] == "regions"
    # ... and through --weights, the whitening with it: the extractor gives the trained network's descriptors
    trained = Extractor(small_preset(**{"features.weights": str(out), "whitening.method": "weights"}))
    before = Extractor(small_preset())
    image = trained.load(sorted(objects.rglob("*.jpg"))[0])
    v = trained.describe_image(image)
    split = split_trunk(trained.model, "efficientnet-lite0", 1)
    net = RMACNet.from_extractor(trained, split)
    assert np.allclose(net.embed(cached_view(trained, split, image)).detach().numpy(), v, atol=1e-5)
    for st in before.learned.values():
        st.fit_extractor(before, [before.load(p) for p in objects.rglob("*.jpg")], np.random.default_rng(0),
                         lambda it, **_: it)
    assert not np.allclose(before.describe_image(image), v, atol=1e-3)

    # a finished run asked for the same epochs trains no more; more epochs continue it
    r = runner.invoke(app, args[:7] + ["4"] + args[8:])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "epoch 4/4" in r.output and "epoch 3/4" not in r.output


def _trainer(objects, cfg, cache):
    trainer = Trainer(small_preset(), cfg, echo=lambda line: None, cache_path=cache)
    ds = read_labelled(objects)
    views, _ = trainer.views([Item(p) for p in ds.paths], "training")
    return trainer, views, ds.labels


def test_interrupted_training_resumes_to_the_same_weights(objects, tmp_path):
    cfg = TrainConfig(train_blocks=1, epochs=2, updates_per_epoch=3, mine_every=2, batch=8, lr=0.05, whiten_lr=0.5)
    cache = tmp_path / "trunk-cache.pt"  # the frozen trunk's outputs, computed once for the three runs
    trainer, views, labels = _trainer(objects, cfg, cache)
    straight = trainer.train(views, labels, state_path=tmp_path / "a.state")

    class Killed(Exception):
        pass

    def kill_at(step):
        if step == 4:  # mid-epoch, mid-mining-round
            raise Killed

    trainer, views, labels = _trainer(objects, cfg, cache)
    with pytest.raises(Killed):
        trainer.train(views, labels, state_path=tmp_path / "b.state", on_update=kill_at)
    trainer, views, labels = _trainer(objects, cfg, cache)
    resumed = trainer.train(views, labels, state_path=tmp_path / "b.state")
    assert resumed.resumed_from == 4 and resumed.steps == straight.steps == 6
    a, b = straight.net.trainable_state(), resumed.net.trainable_state()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["train_map"] for r in straight.history] == [r["train_map"] for r in resumed.history]
    # another configuration does not take over the checkpoint
    other = TrainConfig(**{**cfg.__dict__, "lr": 0.01})
    trainer, views, labels = _trainer(objects, other, cache)
    with pytest.raises(ValueError, match="another training configuration"):
        trainer.train(views, labels, state_path=tmp_path / "b.state")


def test_train_reads_a_groups_csv_and_selects_classes(objects, tmp_path):
    table = tmp_path / "groups.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "object_id", "device"])
        for p in sorted(objects.rglob("*.jpg")):
            w.writerow([str(p), p.parent.name, "x"])
    ds = read_labelled(table, classes=["a*", "c*"])
    assert sorted(set(ds.labels)) == ["astronaut", "chelsea", "coffee"] and len(ds) == 9
    assert read_labelled(objects, classes=["rocket", "coffee"]).classes == ["coffee", "rocket"]


# ----------------------------------------------------------------------------- unlabelled mining


def test_unlabelled_mining_groups_photos_with_their_warped_copies(objects, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    truth = {}
    for i, name in enumerate(PHOTOS[:3]):
        src = photo(name, 260)
        for j in range(3):
            view_of(src, 100 + 10 * i + j, 300).save(folder / f"{i}{j}.jpg", quality=92)
            truth[f"{i}{j}.jpg"] = i
    Image.fromarray(skimage_photo("rocket")[..., :3]).resize((300, 200)).save(folder / "outlier.jpg")
    paths = sorted(folder.glob("*.jpg"))
    mined = mine_groups(paths, np.eye(len(paths), dtype=np.float32), k=0)
    assert mined.tried == len(paths) * (len(paths) - 1) // 2
    got = {p.name: g for p, g in zip(paths, mined.groups.tolist())}
    assert got["outlier.jpg"] == -1 and mined.count == 3
    for a in truth:
        for b in truth:
            assert (got[a] == got[b]) == (truth[a] == truth[b]), (a, b)
    # the pieces: a shortlist holds each image's nearest, components drop lone images
    E = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    assert shortlist(E, 1) == [(0, 1), (2, 3)]
    assert components(5, [(0, 1, 20), (3, 1, 30)]).tolist() == [0, 0, -1, 0, -1]

    # the command: mines, writes the groups, trains on them
    out = tmp_path / "mined.pth"
    r = runner.invoke(app, ["train", str(folder), "--unlabelled", "--mine-k", "0", "--out", str(out), "--epochs", "1",
                            "--train-blocks", "0", "--updates-per-epoch", "2", "--batch", "8",
                            "--set", "image.max_size=96", "--set", "features.layer=stride32", "-q"])
    assert r.exit_code == 0, r.output
    assert "mined 3 groups from 10 images" in r.output and "1 images in no verified pair dropped" in r.output
    rows = list(csv.DictReader(open(out.with_suffix(".groups.csv"))))
    assert len(rows) == 9 and len({r["group"] for r in rows}) == 3


# ----------------------------------------------------------------------------- bad input


def test_train_refuses_bad_input_with_exit_2(objects, tmp_path):
    base = ["--weights", "random:0", "--set", "image.max_size=96", "--epochs", "1", "-q"]
    cases = []
    cases.append((["train", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pth")], "missing: no such folder"))
    one = tmp_path / "one"
    (one / "astronaut").mkdir(parents=True)
    for p in (objects / "astronaut").glob("*.jpg"):
        (one / "astronaut" / p.name).write_bytes(p.read_bytes())
    cases.append((["train", str(one), "--out", str(tmp_path / "m.pth")], "at least two objects (sub-folders or classes), found 1"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    cases.append((["train", str(objects), "--out", str(tmp_path / "m.pth"), "--weights", str(garbage)],
                  "garbage.pth is not a readable torch checkpoint"))
    cases.append((["train", str(objects), "--out", str(tmp_path / "m.pth"), "--preset", "gem-lite0"],
                  "trains R-MAC networks (pooling.method = 'rmac')"))
    cases.append((["train", str(objects), "--out", str(tmp_path / "m.pth"), "--set", "features.arch=vgg16",
                   "--set", "features.layer=", "--train-blocks", "2"], "vgg16 trains its whitening only"))
    cases.append((["train", str(objects), "--out", str(tmp_path)], "is a folder"))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,thing\na.jpg,1\n")
    cases.append((["train", str(bad_csv), "--out", str(tmp_path / "m.pth")], "needs a header with an image column"))
    state = tmp_path / "s.pth"
    state.with_name("s.pth.state").write_bytes(b"\x00garbage")
    cases.append((["train", str(objects), "--out", str(state), "--train-blocks", "0"], "not a readable training checkpoint"))
    for args, message in cases:
        r = runner.invoke(app, args + (base if "--weights" not in args else base[2:]))
        assert r.exit_code == 2, (args, r.output)
        assert "error:" in r.output and message in r.output.replace("\n", " "), (args, r.output)


def test_whitening_from_weights_refuses_a_checkpoint_without_one(tmp_path):
    model, _ = load_efficientnet_lite("efficientnet-lite0", "random:0", "head")
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    ex = Extractor(small_preset(**{"features.weights": str(plain), "whitening.method": "weights"}))
    with pytest.raises(ValueError, match="plain.pth: holds no learned whitening"):
        ex.describe_image(photo("coffee", 96))
