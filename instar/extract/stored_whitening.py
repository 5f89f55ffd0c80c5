"""The `weights` whitening entry: the learned "PCA" layer that travels inside the trunk's checkpoint.

`instar train` saves a trained R-MAC network as the trunk's own checkpoint (so `features.weights = model.pth`
loads it strictly through the trunk's loader) with two extra keys, `whiten.weight` (D', D) and `whiten.shift`
(D,): y = W (x - shift). The trunk loaders hand keys under `whiten.` back as extras instead of loading them
(`instar.extract.features.cnn.EXTRA_PREFIXES`), and this stage reads them from the features stage on first use, so a
preset says `whitening.method = "weights"` and needs no training images. cirtorch's checkpoints, whose
`whiten.weight` / `whiten.bias` are a plain linear layer y = W x + b, are read too.

Where the layer applies is the pooling's business, as for every whitening: R-MAC whitens each region vector, the
other poolings the image vector. A checkpoint `instar train` wrote says which it learned (meta `whitens`), and a
mismatch with the preset's pooling is refused.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.checkpoints import WeightsError
from ..core.norms import l2n
from ..core.protocols import WhiteningStage
from ..core.registry import WHITENINGS


@WHITENINGS.register("weights")
class StoredWhitening(WhiteningStage):
    """The whitening stored with the CNN weights (instar train's whiten.weight + whiten.shift, or cirtorch's whiten.weight + whiten.bias), then L2."""
    learns = False
    fitted = True

    def __init__(self):
        self._features = None
        self._whitens_regions: bool | None = None
        self._layer: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None

    def bind(self, extractor) -> None:
        self._features = extractor.features
        self._whitens_regions = bool(extractor.pooling.whitens_regions)

    def layer(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(weight (D', D), shift (D,) or None, bias (D',) or None) float32, read once from the trunk's checkpoint."""
        if self._layer is not None:
            return self._layer
        if self._features is None or not hasattr(self._features, "model"):
            raise WeightsError("whitening.method = 'weights' reads the whitening stored with CNN weights; "
                               "this preset's features have none")
        self._features.model  # loads the weights (and their extras) on first use
        extras = getattr(self._features, "extras", {})
        source = extras.get("source", self._features.weights)
        weight, shift, bias = extras.get("whiten.weight"), extras.get("whiten.shift"), extras.get("whiten.bias")
        if weight is None or (shift is None and bias is None):
            raise WeightsError(f"{source}: holds no learned whitening (whiten.weight with whiten.shift or whiten.bias); "
                               "use whitening.method = 'pca', or weights written by instar train")
        weight = torch.as_tensor(weight, dtype=torch.float32)
        if weight.ndim != 2:
            raise WeightsError(f"{source}: whiten.weight must be a (D', D) matrix, found shape {tuple(weight.shape)}")
        for name, v, n in (("whiten.shift", shift, weight.shape[1]), ("whiten.bias", bias, weight.shape[0])):
            if v is not None and tuple(v.shape) != (n,):
                raise WeightsError(f"{source}: {name} has shape {tuple(v.shape)}, whiten.weight {tuple(weight.shape)}")
        meta = extras.get("meta") or {}
        learned_on = meta.get("whitens")
        if learned_on in ("regions", "image") and (learned_on == "regions") != self._whitens_regions:
            where = "region vectors" if learned_on == "regions" else "image vectors"
            raise WeightsError(f"{source}: its whitening was learned on {where}, but this preset's pooling whitens "
                               f"{'region' if self._whitens_regions else 'image'} vectors")
        self._layer = (weight, None if shift is None else torch.as_tensor(shift, dtype=torch.float32),
                       None if bias is None else torch.as_tensor(bias, dtype=torch.float32))
        return self._layer

    def transform(self, x):
        """Whiten (N, D) or (D,) vectors (numpy float32 or torch float32), not normalised."""
        weight, shift, bias = self.layer()
        if x.shape[-1] != weight.shape[1]:
            raise WeightsError(f"the stored whitening takes {weight.shape[1]}-D vectors, the pooling gives "
                               f"{x.shape[-1]}-D (weights for another trunk tap?)")
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
        y = (t - shift.to(t.dtype)) @ weight.to(t.dtype).T if shift is not None else t @ weight.to(t.dtype).T
        if bias is not None:
            y = y + bias.to(t.dtype)
        return y if isinstance(x, torch.Tensor) else y.numpy().astype(np.float32)

    def apply(self, v: np.ndarray) -> np.ndarray:
        return l2n(self.transform(v))

    def as_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """(shift (D,), W (D', D)) float32: the layer as the network's `Whiten` holds it (a cirtorch bias b becomes
        the shift -W^+ b, exact when W has full column rank)."""
        weight, shift, bias = self.layer()
        w = weight.numpy().astype(np.float32)
        if shift is None:
            shift_np = np.zeros(w.shape[1], np.float32)
        else:
            shift_np = shift.numpy().astype(np.float32)
        if bias is not None:
            shift_np = shift_np - (np.linalg.pinv(w.astype(np.float64)) @ bias.numpy().astype(np.float64)).astype(np.float32)
        return shift_np, np.ascontiguousarray(w)

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        pass
