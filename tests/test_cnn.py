"""Tests for instar.features.cnn: torchvision-compatible trunks, weight loading, extraction."""
from __future__ import annotations

import functools
import http.server
import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instar.extract.features import cnn

# torchvision VGG16 ('D') conv layers inside `features`: index -> (out, in)
VGG16_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
    14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
    26: (512, 512), 28: (512, 512),
}


def _image(w=96, h=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def vgg0():
    return cnn.load_trunk("vgg16", "random:0")[0]


@pytest.fixture(scope="module")
def r50():
    return cnn.load_trunk("resnet50", "random:0")[0]


@pytest.fixture(scope="module")
def vgg_half_bytes(vgg0):
    """A torchvision-layout VGG16 checkpoint (fp16 to keep it ~30 MB) with a classifier key."""
    sd = {k: v.half() for k, v in vgg0.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 3)
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def vgg_half_model(vgg_half_bytes, tmp_path_factory):
    p = tmp_path_factory.mktemp("w") / "half.pth"
    p.write_bytes(vgg_half_bytes)
    return cnn.load_trunk("vgg16", str(p))[0]


# ----------------------------------------------------------------------------- layout


def test_vgg16_keys_and_shapes_match_torchvision(vgg0):
    expected = {}
    for i, (cout, cin) in VGG16_CONVS.items():
        expected[f"features.{i}.weight"] = (cout, cin, 3, 3)
        expected[f"features.{i}.bias"] = (cout,)
    got = {k: tuple(v.shape) for k, v in vgg0.state_dict().items()}
    assert got == expected
    assert len(vgg0.features) == 30
    assert isinstance(vgg0.features[4], torch.nn.MaxPool2d)
    assert isinstance(vgg0.features[29], torch.nn.ReLU)
    assert vgg0.out_channels == 512


def test_resnet_keys_and_shapes(r50):
    sd = r50.state_dict()
    assert len(sd) == 318  # torchvision resnet50 has 320 keys incl. fc.weight / fc.bias
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["bn1.running_var"] == (64,)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer3.5.conv2.weight"] == (256, 256, 3, 3)
    assert shapes["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert shapes["layer4.2.bn3.weight"] == (2048,)
    assert "layer4.0.downsample.1.num_batches_tracked" in shapes
    assert "layer3.6.conv1.weight" not in shapes and "layer4.3.conv1.weight" not in shapes
    # v1.5: the stride is on conv2, not conv1
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)
    assert r50.out_channels == 2048


def test_resnet101_depth():
    m = cnn.build_trunk("resnet101")
    names = set(m.state_dict())
    assert "layer3.22.conv3.weight" in names and "layer3.23.conv3.weight" not in names
    assert len(names) == 624


def test_unknown_arch_lists_known():
    with pytest.raises(ValueError, match="resnet50"):
        cnn.build_trunk("alexnet")
    with pytest.raises(ValueError, match="vgg16"):
        cnn.load_trunk("vgg19", "random:0")


def test_batchnorm_stays_frozen(r50):
    r50.train()
    try:
        assert all(not m.training for m in r50.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = r50.bn1.running_mean.clone()
        with torch.no_grad():
            r50(torch.randn(1, 3, 64, 64))
        assert torch.equal(before, r50.bn1.running_mean)
    finally:
        r50.eval()


# ----------------------------------------------------------------------------- random / shapes


def test_random_seed_deterministic_and_distinct():
    a = cnn.load_trunk("vgg16", "random:1")[0].state_dict()
    b = cnn.load_trunk("vgg16", "random:1")[0].state_dict()
    c = cnn.load_trunk("vgg16", "random:2")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    # the global RNG is not consumed
    torch.manual_seed(5)
    x = torch.rand(3)
    torch.manual_seed(5)
    cnn.load_trunk("vgg16", "random:3")
    assert torch.equal(torch.rand(3), x)
    with pytest.raises(cnn.WeightsError, match="seed"):
        cnn.load_trunk("vgg16", "random:abc")


def test_output_channels_and_stride(vgg0, r50):
    im = _image(128, 96)
    (v,) = cnn.feature_maps(vgg0, im)
    assert v.shape == (512, 96 // 16, 128 // 16) and v.dtype == torch.float32
    assert (v >= 0).all()  # after ReLU
    (r,) = cnn.feature_maps(r50, im)
    assert r.shape == (2048, 3, 4) and r.dtype == torch.float32


def test_multiscale_sizes(vgg0):
    im = _image(128, 128)
    maps = cnn.feature_maps(vgg0, im, scales=(1.0, 2 ** -0.5, 0.5))
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 8), (5, 5), (4, 4)]  # 128, 90, 64 px


def test_tiny_input_never_empty(vgg0, r50):
    im = _image(10, 7)
    for m in (vgg0, r50):
        for fm in cnn.feature_maps(m, im, scales=(1.0, 0.25)):
            assert fm.shape[1] >= 1 and fm.shape[2] >= 1
            assert torch.isfinite(fm).all()


def test_image_tensor_normalisation():
    im = Image.new("RGB", (5, 4), (255, 0, 128))
    t = cnn.image_tensor(im)
    assert t.shape == (1, 3, 4, 5) and t.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert torch.allclose(t[0, :, 0, 0], torch.tensor(expected), atol=1e-6)
    assert cnn.image_tensor(Image.new("L", (3, 3), 7)).shape == (1, 3, 3, 3)


# ----------------------------------------------------------------------------- local files


def test_torchvision_round_trip(tmp_path, vgg0):
    sd = dict(vgg0.state_dict())
    sd["classifier.0.weight"] = torch.zeros(4096, 8)
    p = tmp_path / "vgg.pth"
    torch.save(sd, p)
    m, extras = cnn.load_trunk("vgg16", str(p))
    assert not m.training
    assert extras["ignored"] == ["classifier.0.weight"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), vgg0(x))


def test_cirtorch_resnet_layout(tmp_path, r50):
    cir_index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    sd = {}
    for k, v in r50.state_dict().items():
        head, _, rest = k.partition(".")
        sd[f"features.{cir_index[head]}.{rest}"] = v
    sd["pool.p"] = torch.tensor([3.0])
    sd["whiten.weight"] = torch.randn(16, 2048)
    sd["whiten.bias"] = torch.randn(16)
    p = tmp_path / "cir.pth"
    torch.save({"state_dict": sd, "meta": {"architecture": "resnet50", "pooling": "gem"}}, p)
    m, extras = cnn.load_trunk("resnet50", str(p))
    assert torch.equal(extras["pool.p"], sd["pool.p"])
    assert extras["whiten.weight"].shape == (16, 2048) and extras["whiten.bias"].shape == (16,)
    assert extras["meta"]["pooling"] == "gem"
    assert extras["ignored"] == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), r50(x))
    # wrong shapes are reported under the file's own (cirtorch) key name
    sd["features.6.5.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    torch.save({"state_dict": sd, "meta": {}}, p)
    with pytest.raises(cnn.WeightsError, match=r"'features\.6\.5\.conv2\.weight'"):
        cnn.load_trunk("resnet50", str(p))
    # meta naming another architecture is refused
    torch.save({"state_dict": sd, "meta": {"architecture": "resnet50"}}, p)
    with pytest.raises(cnn.WeightsError, match="resnet50"):
        cnn.load_trunk("resnet101", str(p))


def test_wrong_shape_names_key_and_file(tmp_path, vgg0):
    sd = dict(vgg0.state_dict())
    sd["features.10.weight"] = torch.zeros(256, 128, 1, 1)
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(cnn.WeightsError, match=r"features\.10\.weight") as ei:
        cnn.load_trunk("vgg16", str(p))
    assert "bad.pth" in str(ei.value)


def test_missing_key_and_other_arch(tmp_path, vgg0, r50):
    sd = dict(vgg0.state_dict())
    del sd["features.28.bias"]
    p = tmp_path / "missing.pth"
    torch.save(sd, p)
    with pytest.raises(cnn.WeightsError, match=r"features\.28\.bias"):
        cnn.load_trunk("vgg16", str(p))
    # a resnet50 file given as vgg16: no features.* keys at all
    p2 = tmp_path / "r50.pth"
    torch.save(r50.state_dict(), p2)
    with pytest.raises(cnn.WeightsError, match="features.0.weight"):
        cnn.load_trunk("vgg16", str(p2))


def test_resnet_deeper_checkpoint_refused(tmp_path, r50):
    sd = dict(r50.state_dict())
    sd["layer3.6.conv1.weight"] = torch.zeros(256, 1024, 1, 1)  # as in a resnet101 file
    p = tmp_path / "deep.pth"
    torch.save(sd, p)
    with pytest.raises(cnn.WeightsError, match=r"layer3\.6\.conv1\.weight"):
        cnn.load_trunk("resnet50", str(p))


def test_missing_num_batches_tracked_is_fine(tmp_path, r50):
    sd = {k: v for k, v in r50.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"] = torch.zeros(10, 2048)
    sd["fc.bias"] = torch.zeros(10)
    p = tmp_path / "old.pth"
    torch.save(sd, p)
    m, extras = cnn.load_trunk("resnet50", str(p))
    assert sorted(extras["ignored"]) == ["fc.bias", "fc.weight"]


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(cnn.WeightsError, match="junk.pth.*not a readable torch checkpoint"):
        cnn.load_trunk("vgg16", str(p))
    with pytest.raises(cnn.WeightsError, match="does not exist"):
        cnn.load_trunk("vgg16", str(tmp_path / "nope.pth"))
    p.write_bytes(b"x" * 100)
    with pytest.raises(cnn.WeightsError, match="junk.pth is not a readable torch checkpoint"):
        cnn.load_trunk("vgg16", str(p))
    p2 = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], p2)
    with pytest.raises(cnn.WeightsError, match="mapping"):
        cnn.load_trunk("vgg16", str(p2))
    p3 = tmp_path / "obj.pth"
    torch.save({"x": _Opaque()}, p3)
    with pytest.raises(cnn.WeightsError, match=r"obj.pth.*_Opaque.*weights_only"):
        cnn.load_trunk("vgg16", str(p3))


class _Opaque:
    pass


# ----------------------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server:
    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(cnn.MIRROR_ENV, raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home


@pytest.fixture
def serve(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    servers = []

    def start():
        s = _Server(root)
        servers.append(s)
        return s

    yield root, start
    for s in servers:
        s.stop()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same(m1, m2):
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        return torch.equal(m1(x), m2(x))


def test_download_url_then_cache(torch_home, serve, vgg_half_bytes, vgg_half_model):
    root, start = serve
    (root / "tiny-vgg.pth").write_bytes(vgg_half_bytes)
    server = start()
    url = f"{server.base}/tiny-vgg.pth"
    m, extras = cnn.load_trunk("vgg16", url)
    cached = torch_home / "hub" / "checkpoints" / "tiny-vgg.pth"
    assert cached.read_bytes() == vgg_half_bytes
    assert extras["source"] == str(cached) and extras["ignored"] == ["classifier.0.weight"]
    assert _same(m, vgg_half_model)
    server.stop()
    m2, _ = cnn.load_trunk("vgg16", url)  # no server: served from the cache
    assert _same(m2, vgg_half_model)


def test_imagenet_mirror_hash_mismatch(torch_home, serve, vgg_half_bytes):
    root, start = serve
    (root / "vgg16-397923af.pth").write_bytes(vgg_half_bytes)  # sha256 is not 397923af...
    server = start()
    with pytest.raises(cnn.WeightsDownloadError, match="hash") as ei:
        cnn.load_trunk("vgg16", "imagenet", mirror=server.base + "/")
    assert f"{server.base}/vgg16-397923af.pth" in str(ei.value)
    ckpt = torch_home / "hub" / "checkpoints"
    assert not ckpt.exists() or list(ckpt.iterdir()) == []


def test_imagenet_mirror_from_env(torch_home, serve, monkeypatch):
    root, start = serve
    (root / "resnet50-0676ba61.pth").write_bytes(b"junk")
    server = start()
    monkeypatch.setenv(cnn.MIRROR_ENV, server.base)
    with pytest.raises(cnn.WeightsDownloadError, match="resnet50-0676ba61.pth.*hash"):
        cnn.load_trunk("resnet50", "imagenet")


def test_imagenet_from_cache_without_network(torch_home, vgg_half_bytes, vgg_half_model, monkeypatch):
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "vgg16-397923af.pth").write_bytes(vgg_half_bytes)
    monkeypatch.setenv(cnn.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}")
    m, extras = cnn.load_trunk("vgg16", "imagenet")
    assert _same(m, vgg_half_model)
    assert extras["source"] == str(ckpt / "vgg16-397923af.pth")


def test_imagenet_unreachable_names_url(torch_home):
    mirror = f"http://127.0.0.1:{_closed_port()}/models"
    with pytest.raises(cnn.WeightsDownloadError) as ei:
        cnn.load_trunk("vgg16", "imagenet", mirror=mirror)
    msg = str(ei.value)
    assert f"{mirror}/vgg16-397923af.pth" in msg
    assert "network" in msg and "random:SEED" in msg
    ckpt = torch_home / "hub" / "checkpoints"
    assert not ckpt.exists() or list(ckpt.iterdir()) == []


def test_default_url_names():
    assert cnn.TORCHVISION_URLS["vgg16"].endswith("/vgg16-397923af.pth")
    assert cnn.TORCHVISION_URLS["resnet50"].endswith("/resnet50-0676ba61.pth")
    assert cnn.TORCHVISION_URLS["resnet101"].endswith("/resnet101-63fe2227.pth")
    assert set(cnn.TORCHVISION_URLS) == set(cnn.ARCHITECTURES)
