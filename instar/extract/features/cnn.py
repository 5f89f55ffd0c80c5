"""CNN trunks (VGG16, ResNet-50/101) that return the last convolutional feature map.

The modules are written with plain ``torch.nn`` but use torchvision's exact parameter
names and shapes, so torchvision ImageNet checkpoints load unchanged; checkpoints saved
by cirtorch (``{'state_dict': {'features.N...', 'pool.p', 'whiten.*'}, 'meta': {...}}``)
load too, with their non-trunk entries handed back to the caller.

Shapes: an image becomes a ``(1, 3, H, W)`` float32 tensor; a trunk maps it to a
``(1, C, h, w)`` map with ``C = model.out_channels`` (512 for VGG16, 2048 for ResNets)
and ``h ~ H / model.stride`` (16 for VGG16, 32 for ResNets).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...core.checkpoints import (WeightsDownloadError, WeightsError, not_a_checkpoint, random_seed, read_checkpoint,
                                 seeded)
from ...core.protocols import FeaturesStage
from ...core.registry import FEATURES, Range, TRUNKS
from ...core.urls import mirror_url, url_basename

ARCHITECTURES = ("vgg16", "resnet50", "resnet101")

# torchvision's IMAGENET1K_V1 checkpoints; the 8 hex digits are the sha256 prefix
# torch.hub verifies after download.
TORCHVISION_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MIRROR_ENV = "INSTAR_WEIGHTS_MIRROR"

# Inputs smaller than this (per side, after scaling) are upsampled to it so that every
# trunk produces a non-empty map (VGG16 needs >= 16 px, ResNets >= 1 px).
MIN_INPUT_SIZE = 32

# Checkpoint entries that are not part of the trunk but that a later stage may use
# (cirtorch: GeM exponent, learned whitening, local whitening; instar train-cs-sr: the CS-SR classifier).
# `instar train` stores its learned "PCA" layer as whiten.weight / whiten.shift, read by whitening.method = weights.
EXTRA_PREFIXES = ("pool.", "whiten.", "lwhiten.", "cssr.")


# ----------------------------------------------------------------------------- modules


class _Trunk(nn.Module):
    """Common base: BatchNorm layers stay in eval mode (frozen statistics) even in train()."""

    arch: str
    out_channels: int
    stride: int

    def train(self, mode: bool = True) -> "_Trunk":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


# torchvision's configuration 'D'; 'M' is a 2x2 max-pool.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def init_conv_bn(m: nn.Module, zero_bias: bool = False) -> bool:
    """torchvision's initialisation of one module (what `random:SEED` weights are drawn from): Kaiming-normal
    (fan out) convolution weights, their bias zeroed if `zero_bias`; BatchNorm weight 1, bias 0. True if `m` was one."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_bias:
            nn.init.zeros_(m.bias)
        return True
    if isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
        return True
    return False


class VGG16Trunk(_Trunk):
    """``features`` = torchvision VGG16 ``features[0:30]`` (no final max-pool).

    forward: ``(N, 3, H, W)`` -> ``(N, 512, floor(H/16), floor(W/16))`` (conv5_3 after ReLU).
    """

    arch = "vgg16"
    out_channels = 512
    stride = 16

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(cin, int(v), kernel_size=3, padding=1))
                layers.append(nn.ReLU(inplace=True))
                cin = int(v)
        self.features = nn.Sequential(*layers)
        for m in self.modules():
            init_conv_bn(m, zero_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 ``conv2``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNetTrunk(_Trunk):
    """torchvision ResNet without ``avgpool``/``fc``.

    forward: ``(N, 3, H, W)`` -> ``(N, 2048, ~H/32, ~W/32)`` (output of ``layer4``).
    """

    out_channels = 2048
    stride = 32

    def __init__(self, arch: str, blocks: tuple[int, int, int, int]):
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
            layer = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            layer += [Bottleneck(inplanes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        for m in self.modules():
            init_conv_bn(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _check_arch(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return arch


def build_trunk(arch: str) -> nn.Module:
    """A randomly initialised trunk (torchvision's kaiming fan-out init), in eval mode.

    The module has attributes ``arch``, ``out_channels`` (512 / 2048) and ``stride`` (16 / 32).
    Uses torch's global RNG; see ``load_trunk(arch, 'random:SEED')`` for a seeded build.
    """
    _check_arch(arch)
    if arch == "vgg16":
        model: nn.Module = VGG16Trunk()
    elif arch == "resnet50":
        model = ResNetTrunk(arch, (3, 4, 6, 3))
    else:
        model = ResNetTrunk(arch, (3, 4, 23, 3))
    return model.eval()


# ----------------------------------------------------------------------------- weights


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _download(url: str) -> tuple[object, str]:
    """Fetch ``url`` through torch.hub's cache ($TORCH_HOME/hub/checkpoints), checking the
    sha256 prefix in the file name when there is one. Returns (loaded object, cached path)."""
    filename = url_basename(url)
    if not filename:
        raise WeightsError(f"weights URL {url} does not end with a file name")
    cached = _cache_dir() / filename
    try:
        obj = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as e:
        if cached.is_file():  # the download (or cache hit) worked; reading the file failed
            raise not_a_checkpoint(cached, e) from e
        if "invalid hash value" in str(e):
            raise WeightsDownloadError(
                f"downloaded {url} but its sha256 hash does not match the prefix in the file name "
                f"({e}); the file was discarded. The mirror or server is serving a different file."
            ) from e
        raise WeightsDownloadError(
            f"could not download weights from {url} ({type(e).__name__}: {e}). No network may be "
            f"reachable: put the file at {cached} (or pass a local .pth path as the weights, "
            f"or set a mirror with {MIRROR_ENV}), or use 'random:SEED' for random weights."
        ) from e
    return obj, str(cached)


def _split_checkpoint(obj: object, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (flat tensor dict, extras with 'meta' if any) from a torchvision or cirtorch checkpoint."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source}: expected a state dict (a mapping), found {type(obj).__name__}")
    extras: dict = {}
    sd = obj
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
        if "meta" in obj:
            extras["meta"] = obj["meta"]
    flat: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            continue
        if k.startswith("module."):  # saved from DataParallel
            k = k[len("module."):]
        if isinstance(v, torch.Tensor):
            flat[k] = v
    if not flat:
        raise WeightsError(f"{source}: checkpoint holds no tensors")
    return flat, extras


_CIRTORCH_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def _to_torchvision_names(arch: str, flat: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename cirtorch ResNet keys (``features.N.*``) to torchvision's; also return new -> original name."""
    if arch == "vgg16" or not any(k.startswith("features.") for k in flat):
        return flat, {k: k for k in flat}
    out, orig = {}, {}
    for k, v in flat.items():
        new = k
        if k.startswith("features."):
            idx, _, rest = k[len("features."):].partition(".")
            if idx in _CIRTORCH_RESNET:
                new = f"{_CIRTORCH_RESNET[idx]}.{rest}"
        out[new], orig[new] = v, k
    return out, orig


def _trunk_prefixes(arch: str) -> tuple[str, ...]:
    if arch == "vgg16":
        return ("features.",)
    return ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.", "features.")


def _apply_state_dict(model: nn.Module, arch: str, obj: object, source: str) -> dict:
    flat, extras = _split_checkpoint(obj, source)
    meta = extras.get("meta")
    if isinstance(meta, Mapping) and isinstance(meta.get("architecture"), str):
        if meta["architecture"] != arch:
            raise WeightsError(
                f"{source}: checkpoint is for architecture {meta['architecture']!r}, not {arch!r}"
            )
    flat, orig = _to_torchvision_names(arch, flat)
    expected = model.state_dict()
    prefixes = _trunk_prefixes(arch)
    ignored: list[str] = []
    for k, v in flat.items():
        if k in expected:
            continue
        if k.startswith(EXTRA_PREFIXES):
            extras[k] = v
        elif k.startswith(prefixes):
            raise WeightsError(
                f"{source}: unexpected trunk key {orig[k]!r} for {arch} "
                f"(is this a checkpoint for a different architecture?)"
            )
        else:
            ignored.append(orig[k])
    full = {}
    for k, ref in expected.items():
        if k not in flat:
            if k.endswith("num_batches_tracked"):  # absent from older torchvision files
                full[k] = ref
                continue
            raise WeightsError(f"{source}: missing trunk key {k!r} for {arch}")
        v = flat[k]
        if tuple(v.shape) != tuple(ref.shape):
            raise WeightsError(
                f"{source}: wrong shape for {orig[k]!r}: expected {tuple(ref.shape)} for {arch}, "
                f"found {tuple(v.shape)}"
            )
        full[k] = v
    model.load_state_dict(full, strict=True)
    extras["ignored"] = ignored
    return extras


def load_trunk(arch: str, weights: str, *, mirror: str | None = None) -> tuple[nn.Module, dict]:
    """Build ``arch`` and load ``weights``; returns ``(model in eval mode, extras)``.

    weights:
      * ``'imagenet'``: torchvision's IMAGENET1K_V1 file (``TORCHVISION_URLS[arch]``), read
        from the torch hub cache ``$TORCH_HOME/hub/checkpoints/<name>`` when present, else
        downloaded there with ``torch.hub.load_state_dict_from_url(check_hash=True)``.
        ``mirror`` (default: env ``INSTAR_WEIGHTS_MIRROR``) replaces download.pytorch.org:
        the same file name is fetched from ``mirror.rstrip('/') + '/' + name``; a mirror
        without ``://`` is a local directory.
      * ``'random:SEED'``: seeded random init (global RNG state is left untouched).
      * an ``http(s)://`` URL: downloaded through the same cache.
      * a local ``.pth``/``.pt`` path, torchvision or cirtorch layout.

    extras: ``'source'`` (str), ``'ignored'`` (list of checkpoint keys not used, e.g.
    ``classifier.*`` / ``fc.*``), and when present cirtorch's ``'pool.p'``,
    ``'whiten.weight'`` ``(D, C)``, ``'whiten.bias'`` ``(D,)`` tensors and ``'meta'`` (dict);
    these are returned, not applied.

    Raises ValueError for an unknown arch, WeightsError for unusable files or state dicts,
    WeightsDownloadError when a download fails or its hash does not match.
    """
    _check_arch(arch)
    if not isinstance(weights, str) or not weights:
        raise WeightsError(f"weights must be 'imagenet', 'random:SEED', a URL or a file path; got {weights!r}")

    seed = random_seed(weights)
    if seed is not None:
        model = seeded(seed, build_trunk, arch)
        return model.eval(), {"source": weights, "ignored": []}

    model = build_trunk(arch)
    if weights == "imagenet":
        mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
        obj, source = _download(mirror_url(TORCHVISION_URLS[arch], mirror))
    elif weights.startswith(("http://", "https://", "file://")):
        obj, source = _download(weights)
    else:
        source = weights
        obj = read_checkpoint(weights)
    extras = _apply_state_dict(model, arch, obj, source)
    extras["source"] = source
    return model.eval(), extras


# ----------------------------------------------------------------------------- extraction


def image_tensor(image: Image.Image, mean: Iterable[float] = IMAGENET_MEAN, std: Iterable[float] = IMAGENET_STD) -> torch.Tensor:
    """PIL image -> ``(1, 3, H, W)`` float32 tensor: RGB in [0, 1], minus `mean`, divided by `std` (per channel,
    on the [0, 1] scale; torchvision's ImageNet statistics by default)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    a = np.asarray(image, dtype=np.uint8)
    x = torch.from_numpy(a.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)
    mean = torch.tensor(tuple(mean), dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(tuple(std), dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def scaled_inputs(model: nn.Module, image: Image.Image, scales: Iterable[float] = (1.0,)) -> list[torch.Tensor]:
    """The ``(1, 3, H_s, W_s)`` input tensor the trunk sees at each scale (normalised with the model's
    ``input_mean`` / ``input_std``, on its device and dtype); `feature_maps` runs the trunk on them, and a
    network trained on the same maps (instar.learning) feeds it exactly these.

    Scale ``s`` resizes the normalised ``(1, 3, H, W)`` tensor with
    ``F.interpolate(scale_factor=s, mode='bilinear', align_corners=False)`` (as cirtorch's
    multi-scale extraction does; s=1 is used unresized). A side that would end up smaller
    than MIN_INPUT_SIZE (32 px) is upsampled to 32 px so the map is never empty
    (at least 2x2 for VGG16, 1x1 for ResNets).
    """
    device, dtype = _model_device_dtype(model)
    x = image_tensor(image, getattr(model, "input_mean", IMAGENET_MEAN), getattr(model, "input_std", IMAGENET_STD))
    x = x.to(device=device, dtype=dtype)
    h, w = x.shape[-2:]
    out = []
    for s in scales:
        s = float(s)
        if not s > 0:
            raise ValueError(f"scales must be positive, got {s}")
        nh, nw = (h, w) if s == 1.0 else (int(h * s), int(w * s))
        if nh < MIN_INPUT_SIZE or nw < MIN_INPUT_SIZE:
            xs = F.interpolate(x, size=(max(nh, MIN_INPUT_SIZE), max(nw, MIN_INPUT_SIZE)),
                               mode="bilinear", align_corners=False)
        elif s == 1.0:
            xs = x
        else:
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        out.append(xs)
    return out


@torch.no_grad()
def feature_maps(model: nn.Module, image: Image.Image, scales: Iterable[float] = (1.0,)) -> list[torch.Tensor]:
    """One ``(C, h, w)`` float32 CPU map per scale: the trunk on each of `scaled_inputs`."""
    return [model(xs)[0].to(device="cpu", dtype=torch.float32) for xs in scaled_inputs(model, image, scales)]


# ----------------------------------------------------------------------------- stage entries


def _register_torchvision_trunk(arch: str, layer: str) -> None:
    def load(weights: str, layer: str, mirror: str | None) -> tuple[nn.Module, dict]:
        return load_trunk(arch, weights, mirror=mirror)
    load.__doc__ = f"torchvision's {arch} up to {layer} (weights: imagenet = torchvision's file, random:SEED, .pth, URL)."
    TRUNKS.register(arch, layers=(layer,))(load)


_register_torchvision_trunk("vgg16", "conv5_3")
_register_torchvision_trunk("resnet50", "layer4")
_register_torchvision_trunk("resnet101", "layer4")


@FEATURES.register("cnn", choices={"arch": TRUNKS.names})
class CNNFeatures(FeaturesStage):
    """Conv feature maps of a trunk (`arch`, tapped at `layer`; '' = its default) at each of the image `scales`."""
    kind = "maps"

    def __init__(self, *, arch: str = "vgg16", weights: str = "imagenet", scales: Annotated[tuple[float, ...], Range(gt=0, le=8)] = (1.0,), layer: str = ""):
        self.arch, self.weights, self.scales, self.layer = arch, weights, list(scales), layer
        self.weights_mirror: str | None = None
        self._model: nn.Module | None = None
        self.extras: dict = {}

    @property
    def model(self) -> nn.Module:
        """The trunk, loaded on first use (weights may need a download or a cache read)."""
        if self._model is None:
            self._model, self.extras = TRUNKS.entry(self.arch).factory(self.weights, self.layer, self.weights_mirror)
        return self._model

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        """One (C, h, w) float32 map per scale."""
        return feature_maps(self.model, image, self.scales)

    @torch.no_grad()
    def batch(self, images: list[Image.Image]) -> list[list[torch.Tensor]]:
        """`self(image)` for images of one size, the trunk run once per scale on all of them stacked (the batched
        forward a worker or an accelerator runs; on CPU with one torch thread, bit-identical to one at a time)."""
        if len({im.size for im in images}) > 1:
            raise ValueError("a batched forward needs images of one size; group them by size first")
        inputs = [scaled_inputs(self.model, im, self.scales) for im in images]
        out: list[list[torch.Tensor]] = [[] for _ in images]
        for s in range(len(self.scales)):
            maps = self.model(torch.cat([x[s] for x in inputs])).to(device="cpu", dtype=torch.float32)
            for i in range(len(images)):
                out[i].append(maps[i])
        return out
