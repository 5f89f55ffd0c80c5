"""The extractor as composed stages: every pre-registry preset gives the descriptors the old extractor stored.

`tests/data/descriptors_before_registry.npz` was written by the extractor as it was before the stages became
registry entries (commit 25fac39): for each built-in preset (CNN weights random:0, images shrunk to 160 px,
small codebook / whitening), the learned state and the descriptors of four photos and of one box query.
Loading that state into today's extractor must reproduce the descriptors (bit-identical on the machine that
wrote them; a tolerance covers other CPUs' float rounding).
"""
from typing import Annotated

import numpy as np
import pytest
from PIL import Image

from instar.extract.extractor import Extractor
from instar.presets import load_preset
from instar.core.registry import POOLINGS, Range, Registry, RegistryError

from conftest import skimage_photo

STORED = __import__("pathlib").Path(__file__).parent / "data" / "descriptors_before_registry.npz"
NAMES = ["astronaut", "coffee", "chelsea", "rocket"]
# gem (ResNet-101 at 3 scales) takes ~17 s on a loaded 2-core machine: it runs with the slow tests
PRESETS = ["rootsift-vlad", "mac", "spoc", pytest.param("gem", marks=pytest.mark.slow), "crow", "rmac-vgg16",
           "ipa-sum-vgg16"]


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("p160")
    for n in NAMES:
        im = Image.fromarray(skimage_photo(n)[..., :3])
        im.thumbnail((160, 160))
        im.save(root / f"{n}.png")
    return [root / f"{n}.png" for n in NAMES]


def _preset(name):
    p = load_preset(name)
    ov = {"image.max_size": "160"}
    if p["features"]["type"] == "cnn":
        ov["features.weights"] = "random:0"
    else:
        ov.update({"pooling.k": "8", "features.max_keypoints": "300"})
    if p["whitening"]["method"] == "pca":
        ov["whitening.dim"] = "16" if p["pooling"]["method"] == "rmac" else "3"
    return p.with_overrides(ov)


@pytest.mark.parametrize("name", PRESETS)
def test_stored_descriptors_are_reproduced(name, small_photos):
    stored = np.load(STORED)
    prefix = f"{name}/state/"
    # the old layout named the VLAD codebook 'codebook.*'; it now belongs to the pooling stage
    state = {("pooling." + k[len(prefix):] if k.startswith(prefix + "codebook.") else k[len(prefix):]): stored[k]
             for k in stored.files if k.startswith(prefix)}
    assert state, f"nothing stored for {name}"
    ex = Extractor(_preset(name)).load_state(state)
    assert ex.is_fitted
    got = np.stack([ex.describe(p) for p in small_photos])
    np.testing.assert_allclose(got, stored[f"{name}/desc"], atol=2e-5, rtol=0)
    np.testing.assert_allclose(ex.describe(small_photos[0], (10, 20, 120, 100)), stored[f"{name}/boxdesc"], atol=2e-5, rtol=0)


def test_registry_derives_the_schema_from_signatures():
    reg = Registry("demo")

    @reg.register("scaled")
    class Scaled:
        """Multiply by a factor."""
        def __init__(self, *, factor: Annotated[float, Range(gt=0)] = 2.0, bias: Annotated[int, Range(ge=0)] = 0):
            self.factor, self.bias = factor, bias

    assert reg.entry("scaled").params == {"factor": 2.0, "bias": 0}
    assert {k: str(v) for k, v in reg.entry("scaled").ranges.items()} == {"factor": "> 0", "bias": ">= 0"}
    with pytest.raises(TypeError, match="numeric parameter 'size' declares no range"):
        @reg.register("unbounded")
        def unbounded(*, size: int = 3):
            return size
    assert reg.entry("scaled").doc == "Multiply by a factor."
    assert reg.build("scaled", factor=3.0).factor == 3.0
    with pytest.raises(RegistryError, match="takes no parameter 'scale'"):
        reg.build("scaled", scale=3.0)
    with pytest.raises(RegistryError, match="demo.method = 'nope' is not one of scaled"):
        reg.entry("nope")
    with pytest.raises(TypeError, match="needs a default"):
        @reg.register("bad")
        def bad(*, x):
            return x
    assert {"mac", "spoc", "sum", "gem", "crow", "rmac", "vlad"} <= set(POOLINGS.names())
