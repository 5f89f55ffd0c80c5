"""The `weights` whitening (instar.extract.stored_whitening): the layer stored in a trunk checkpoint, applied as
y = W (x - shift) (instar train) or y = W x + b (cirtorch), checked against the same arithmetic by hand."""
import numpy as np
import pytest
import torch

from instar.extract.extractor import Extractor
from instar.extract.features.efficientnet import load_efficientnet_lite
from instar.presets import load_preset


def extractor_with(tmp_path, **extra_keys):
    model, _ = load_efficientnet_lite("efficientnet-lite0", "random:0", "stride32")
    sd = model.state_dict()
    sd.update(extra_keys)
    path = tmp_path / "with-whitening.pth"
    torch.save(sd, path)
    preset = load_preset("gem-lite0").with_overrides({"features.weights": str(path), "features.layer": "stride32",
                                                      "whitening.method": "weights", "image.max_size": "96",
                                                      "features.scales": "1.0"})
    return Extractor(preset)


def test_instar_train_layout_is_w_times_x_minus_shift_then_l2(tmp_path):
    g = torch.Generator().manual_seed(0)
    w, shift = torch.randn(16, 320, generator=g), torch.randn(320, generator=g)
    ex = extractor_with(tmp_path, **{"whiten.weight": w, "whiten.shift": shift})
    x = np.random.default_rng(1).standard_normal((3, 320)).astype(np.float32)
    by_hand = (x - shift.numpy()) @ w.numpy().T
    np.testing.assert_allclose(ex.whitening.transform(x), by_hand, rtol=1e-5, atol=1e-4)
    y = ex.whitening.apply(x[0])
    np.testing.assert_allclose(y, by_hand[0] / np.linalg.norm(by_hand[0]), rtol=1e-5, atol=1e-5)
    shift_out, w_out = ex.whitening.as_layer()
    assert np.array_equal(shift_out, shift.numpy()) and np.array_equal(w_out, w.numpy())


def test_cirtorch_layout_is_w_times_x_plus_bias_and_its_shift_is_exact(tmp_path):
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(320, 320, generator=g), torch.randn(320, generator=g)
    ex = extractor_with(tmp_path, **{"whiten.weight": w, "whiten.bias": b})
    x = np.random.default_rng(4).standard_normal((2, 320)).astype(np.float32)
    np.testing.assert_allclose(ex.whitening.transform(x), x @ w.numpy().T + b.numpy(), rtol=1e-4, atol=1e-3)
    shift, w_np = ex.whitening.as_layer()  # the same layer as W (x - shift): shift = -W^+ b
    np.testing.assert_allclose((x - shift) @ w_np.T, x @ w.numpy().T + b.numpy(), rtol=1e-3, atol=1e-2)


def test_a_layer_of_the_wrong_width_is_refused_naming_both(tmp_path):
    ex = extractor_with(tmp_path, **{"whiten.weight": torch.randn(8, 100), "whiten.shift": torch.randn(100)})
    with pytest.raises(ValueError, match="takes 100-D vectors, the pooling gives 320-D"):
        ex.whitening.transform(np.zeros((1, 320), np.float32))
