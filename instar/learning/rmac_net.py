"""R-MAC as one differentiable network (Gordo et al., Deep Image Retrieval, sec. 3.1).

    image -> trunk -> per scale: RoI max-pooling over the regions stage's boxes -> L2 -> "PCA" (a shift and a
    fully connected layer, `Whiten`) -> L2 -> sum over regions -> L2;  summed over the scales -> L2

which is exactly what the `rmac` pooling computes with a fitted PCA-whitening (`instar.extract.pooling.functional.rmac`), so at
initialisation (the layer set from that PCA-whitening, `as_layer()`) the network gives the preset's descriptor,
and once trained its checkpoint is a drop-in replacement (`model_checkpoint`).

Training on CPU: the trunk is cut in two (`TrunkSplit`). The first part is frozen and runs once per image: its
output at every scale, the region boxes of the final map and the initial region vectors are kept in a
`CachedView`; only the last part (the last `train_blocks` MBConv blocks and the head conv for EfficientNet-Lite,
`TRUNK_SPLITS`) and the "PCA" layer run again as they learn. `train_blocks = 0` freezes the whole trunk: the
cached region vectors are then all the network needs, and only the whitening learns.

Regions are computed once, by the preset's regions stage on the initial network's final map (the rigid grid
depends on the map's size alone; learned proposals are those of the initial trunk, as Gordo et al. learn the
representation on a fixed grid first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.norms import l2n
from ..extract.features.cnn import scaled_inputs
from ..extract.pooling.functional import region_mac

FORMAT = "instar-rmac/1"


class LearningError(ValueError):
    """A preset, trunk, training set or checkpoint that training cannot use; the message says why."""


class Whiten(nn.Module):
    """The "PCA" layer of Gordo et al., a shift and a fully connected layer: y = W (x - shift), W (D', D).

    It learns in the whitened space of its initial value (W0, shift0), e.g. a PCA-whitening (shift0 = the mean,
    W0 = the whitening projection transposed): y = A (W0 (x - shift0) - d), with A (D', D') starting at the identity
    and d (D',) at zero, so that W = A W0 and shift = shift0 + W0^+ d. The function class is the same; the steps are
    not: in the plain parametrisation the gradient of the shift is scaled by W0^T (the whitening's 1/sqrt(eigenvalue)
    factors, in the thousands) and its effect by W0 again, while W's own gradient is tiny next to W, so the first SGD
    steps wreck the descriptor and W hardly learns. At initialisation the layer computes exactly what
    `PCAWhitening.transform` does, in the same order (A = I and d = 0 change no bit)."""

    def __init__(self, shift, weight):
        super().__init__()
        shift = torch.as_tensor(np.asarray(shift, dtype=np.float32))
        weight = torch.as_tensor(np.asarray(weight, dtype=np.float32))
        if weight.ndim != 2 or tuple(shift.shape) != (weight.shape[1],):
            raise LearningError(f"a whitening layer needs a (D',D) weight and a (D,) shift, got {tuple(weight.shape)} "
                                f"and {tuple(shift.shape)}")
        self.register_buffer("basis", weight.clone())   # W0
        self.register_buffer("origin", shift.clone())   # shift0
        self.A = nn.Parameter(torch.eye(weight.shape[0]))
        self.d = nn.Parameter(torch.zeros(weight.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.origin) @ self.basis.T - self.d) @ self.A.T

    @torch.no_grad()
    def weight_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (D', D), shift (D,)) of y = W (x - shift), as the checkpoint stores the layer."""
        weight = self.A @ self.basis
        shift = self.origin + torch.linalg.pinv(self.basis.double()).float() @ self.d
        return weight.contiguous(), shift.contiguous()


# ----------------------------------------------------------------------------- trunk splits


class TrunkSplit:
    """A trunk cut in two: `frozen(x)` runs once per image (its output is cached), `trained(x)` runs again as it
    learns; `frozen` then `trained` is the trunk's forward. `modules()` are the trained part's modules."""

    def __init__(self, model: nn.Module):
        self.model = model

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def trained(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        return []

    @property
    def trains(self) -> bool:
        return bool(self.modules())

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters()]


class FrozenTrunk(TrunkSplit):
    """The whole trunk frozen (any architecture): only the whitening learns."""

    def frozen(self, x):
        return self.model(x)

    def trained(self, x):
        return x


class LiteSplit(TrunkSplit):
    """EfficientNet-Lite (`instar.extract.features.efficientnet`, the checkpoint's `_blocks` layout): the last `blocks` MBConv
    blocks before the tap, and the head conv (`_conv_head` + `_bn1`) when the tap is `head`, learn; the stem and
    the earlier blocks are frozen. BatchNorm statistics stay frozen (the trunk keeps them in eval mode); their
    affine weights in the trained blocks learn."""

    def __init__(self, model: nn.Module, blocks: int):
        super().__init__(model)
        n = int(model._n_blocks)  # blocks the tap runs (16 for lite0's stride32/head, 11 for stride16)
        if not 1 <= blocks <= n:
            raise LearningError(f"train_blocks {blocks}: {model.arch} tapped at {model.layer} has {n} MBConv blocks "
                                f"(0 trains the whitening only)")
        self.start, self.stop = n - blocks, n
        self.head = model.layer == "head"

    def frozen(self, x):
        m = self.model
        x = x.contiguous(memory_format=torch.channels_last)  # as EfficientNetLite._features runs
        x = F.relu6(m._bn0(m._conv_stem(x)))
        for block in m._blocks[:self.start]:
            x = block(x)
        return x.contiguous()

    def trained(self, x):
        m = self.model
        x = x.contiguous(memory_format=torch.channels_last)
        for block in m._blocks[self.start:self.stop]:
            x = block(x)
        if self.head:
            x = F.relu6(m._bn1(m._conv_head(x)))
        return x.contiguous()

    def modules(self):
        m = self.model
        return [*m._blocks[self.start:self.stop], *((m._conv_head, m._bn1) if self.head else ())]


# arch -> split(model, blocks); a new trunk that can train its last stages registers here
TRUNK_SPLITS: dict[str, Callable[[nn.Module, int], TrunkSplit]] = {
    arch: LiteSplit for arch in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")}


def split_trunk(model: nn.Module, arch: str, train_blocks: int) -> TrunkSplit:
    """The trunk cut so that its last `train_blocks` blocks learn (0: none, the whole trunk is frozen)."""
    if train_blocks < 0:
        raise LearningError(f"train_blocks {train_blocks}: must be 0 (whitening only) or more")
    if train_blocks == 0:
        return FrozenTrunk(model)
    if arch not in TRUNK_SPLITS:
        raise LearningError(f"train_blocks {train_blocks}: instar can train the last blocks of "
                            f"{', '.join(TRUNK_SPLITS)}; {arch} trains its whitening only (train_blocks 0)")
    return TRUNK_SPLITS[arch](model, train_blocks)


# ----------------------------------------------------------------------------- the network


@dataclass
class CachedView:
    """One image as the network trains on it, per scale: `inputs` the frozen part's output (1, C', h', w') (None
    when the whole trunk is frozen), `cells` (R, 4) int64 region boxes on the final map, and `regions` (R, C) the
    initial network's L2-normalised region MACs (all the network needs when the trunk is frozen)."""
    inputs: list[torch.Tensor] | None
    cells: list[np.ndarray]
    regions: list[torch.Tensor]

    def to_state(self) -> dict:
        out = {"cells": [torch.from_numpy(np.asarray(c, np.int64)) for c in self.cells], "regions": self.regions}
        if self.inputs is not None:
            out["inputs"] = self.inputs
        return out

    @classmethod
    def from_state(cls, state: dict) -> "CachedView":
        return cls(state.get("inputs"), [c.numpy() for c in state["cells"]], state["regions"])


@torch.no_grad()
def cached_view(extractor, split: TrunkSplit, image) -> CachedView:
    """A prepared PIL image through the frozen part, the initial trained part and the extractor's regions stage
    (bound to this image exactly as `Extractor.regions_of` binds it)."""
    inputs, maps = [], []
    for xs in scaled_inputs(split.model, image, extractor.features.scales):
        pre = split.frozen(xs)
        inputs.append(pre)
        maps.append(split.trained(pre)[0].to(dtype=torch.float32))
    regions_of = extractor.regions_of(image, maps)
    cells = [regions_of(m).cells for m in maps]
    regions = [l2n(region_mac(m, c)) for m, c in zip(maps, cells)]
    return CachedView(inputs if split.trains else None, cells, regions)


def check_preset(preset) -> None:
    """Refuse a preset the network cannot be: R-MAC pooling over a CNN's map."""
    f = preset["features"]
    if f["type"] != "cnn":
        raise LearningError(f"preset {preset.name!r}: instar trains CNN trunks; features.type is {f['type']!r}")
    if preset["pooling"]["method"] != "rmac":
        raise LearningError(f"preset {preset.name!r}: instar trains R-MAC networks (pooling.method = 'rmac'), "
                            f"not pooling.method = {preset['pooling']['method']!r}")


class RMACNet(nn.Module):
    """R-MAC as one network over `CachedView`s: `embed(view)` -> (D,) L2-normalised descriptor (with gradients
    through the "PCA" layer and the trunk's trained part). `trunk` is the extractor's trunk module itself, so
    its state dict is the trained checkpoint's trunk."""

    def __init__(self, trunk: nn.Module, split: TrunkSplit, whiten: Whiten, arch: str):
        super().__init__()
        self.trunk = trunk
        self.whiten = whiten
        self.split = split
        self.arch = arch
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        for p in split.parameters():
            p.requires_grad_(True)

    @classmethod
    def from_extractor(cls, extractor, split: TrunkSplit) -> "RMACNet":
        """The network of an extractor whose whitening is fitted (its `as_layer()` starts the "PCA" layer)."""
        check_preset(extractor.preset)
        whitening = extractor.whitening
        if not hasattr(whitening, "as_layer"):
            raise LearningError(f"preset {extractor.preset.name!r}: whitening.method "
                                f"{extractor.preset['whitening']['method']!r} cannot start the network's \"PCA\" layer "
                                "(use 'pca', learned on the training images first, or 'weights')")
        shift, weight = whitening.as_layer()
        return cls(extractor.model, split, Whiten(shift, weight), extractor.preset["features"]["arch"])

    def trainable(self) -> list[nn.Parameter]:
        """The parameters that learn: the "PCA" layer's, then the trunk's trained part's."""
        return [*self.whiten.parameters(), *self.split.parameters()]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every parameter that learns, by name (what a resumable checkpoint stores)."""
        names = {id(p): n for n, p in self.named_parameters()}
        return {names[id(p)]: p.detach().clone() for p in self.trainable()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters())
        expected = {n for n, p in params.items() if any(p is q for q in self.trainable())}
        if set(state) != expected:
            raise LearningError(f"the checkpoint's trained parameters ({len(state)}) are not this network's "
                                f"({len(expected)}): another train_blocks or trunk")
        with torch.no_grad():
            for n, v in state.items():
                if tuple(v.shape) != tuple(params[n].shape):
                    raise LearningError(f"the checkpoint's {n} has shape {tuple(v.shape)}, the network's "
                                        f"{tuple(params[n].shape)}")
                params[n].copy_(v)

    def pool(self, regions: torch.Tensor) -> torch.Tensor:
        """(R, C) L2-normalised region vectors of one scale -> (D,): whitened, L2, summed, L2."""
        return l2n(l2n(self.whiten(regions)).sum(dim=0))

    def embed(self, view: CachedView) -> torch.Tensor:
        """One image's (D,) R-MAC descriptor, L2-normalised (sum over its scales, L2)."""
        total = 0
        for s, cells in enumerate(view.cells):
            if view.inputs is None:
                regions = view.regions[s]
            else:
                fmap = self.split.trained(view.inputs[s])[0]
                regions = l2n(region_mac(fmap, cells))
            total = total + self.pool(regions)
        return l2n(total)

    def embed_many(self, views: list[CachedView], chunk: int = 32) -> torch.Tensor:
        """(N, D) descriptors of `views`, as `embed` computes them but batched: views whose frozen outputs have the
        same shapes run the trained part together, `chunk` at a time (what bounds the memory a backward pass holds),
        and every region vector of a scale is whitened by one matrix product. Equal to `embed` up to float
        rounding; several times faster on CPU (one 20x15 map per convolution call leaves the cores idle)."""
        n = len(views)
        if n == 0:
            return torch.zeros((0, self.whiten.basis.shape[0]))
        regions: list[list[torch.Tensor]] = [list(v.regions) for v in views]
        if views[0].inputs is not None:
            groups: dict[tuple, list[int]] = {}
            for i, v in enumerate(views):
                groups.setdefault(tuple(tuple(x.shape) for x in v.inputs), []).append(i)
            for idx in groups.values():
                for c in range(0, len(idx), chunk):
                    part = idx[c:c + chunk]
                    for s in range(len(views[part[0]].inputs)):
                        fmaps = self.split.trained(torch.cat([views[i].inputs[s] for i in part]))
                        for j, i in enumerate(part):
                            regions[i][s] = l2n(region_mac(fmaps[j], views[i].cells[s]))
        total = 0
        for s in range(len(views[0].cells)):
            stacked = torch.cat([r[s] for r in regions])
            owner = torch.repeat_interleave(torch.arange(n), torch.tensor([len(r[s]) for r in regions]))
            whitened = l2n(self.whiten(stacked))
            summed = torch.zeros((n, whitened.shape[1]), dtype=whitened.dtype).index_add(0, owner, whitened)
            total = total + l2n(summed)
        return l2n(total)

    @torch.no_grad()
    def embed_all(self, views: list[CachedView]) -> torch.Tensor:
        """(N, D) descriptors of many views, without gradients."""
        return self.embed_many(views)

    def model_checkpoint(self, meta: dict) -> dict:
        """The trained model in the trunk's own checkpoint layout (every key, so the trunk's loader reads it
        strictly through `features.weights`) plus the "PCA" layer as `whiten.weight` (D', D) and `whiten.shift`
        (D,), applied to region vectors (meta `whitens = 'regions'`), read by `whitening.method = 'weights'`."""
        sd = {k: v.detach().clone().contiguous() for k, v in self.trunk.state_dict().items()}
        sd["whiten.weight"], sd["whiten.shift"] = self.whiten.weight_and_shift()
        return {"state_dict": sd, "meta": {"format": FORMAT, "architecture": self.arch, "whitens": "regions", **meta}}
