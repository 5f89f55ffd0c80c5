"""Model-level fusion (instar/fusion.py): several presets' vectors of one image, weighted, in one stored vector
whose inner product is the weighted mean of the parts' cosines; an index, a search and a whitening use it as
any global vector. The parts here are the two tiny ONNX graphs of tests/data (per-channel means), so every
expected vector is worked out by hand."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instar import Index, search
from instar.extract.extractor import Extractor
from instar.extract.features.fusion import FusionError, FusionFeatures
from instar.presets import load_preset, preset_from_toml

from conftest import skimage_photo

DATA = Path(__file__).parent / "data"


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Two weight-free presets: A = [mean R, G, B, pixel count] at 16 x 16; B = per-channel (x/255 - 0.5) / 0.5."""
    root = tmp_path_factory.mktemp("parts")
    (root / "a.toml").write_text(f'name = "a"\n[features]\ntype = "onnx"\nmodel = "{DATA / "mean_rgb_nhwc_uint8.onnx"}"\n'
                                 'resize = "square"\nsize = 16\n[pooling]\nmethod = "none"\n')
    (root / "b.toml").write_text(f'name = "b"\n[features]\ntype = "onnx"\nmodel = "{DATA / "mean_rgb_nchw_float.onnx"}"\n'
                                 'layout = "NCHW"\ndtype = "float32"\nresize = "none"\nmean = [0.5, 0.5, 0.5]\n'
                                 'std = [0.5, 0.5, 0.5]\n[pooling]\nmethod = "none"\n')
    return root / "a.toml", root / "b.toml"


def fusion_toml(a, b, weights="[1.0, 3.0]", extra=""):
    return (f'name = "ab"\n[features]\ntype = "fusion"\nparts = "{a}, {b}"\nweights = {weights}\n'
            f'[pooling]\nmethod = "none"\n{extra}')


def solid(w, h, rgb):
    return Image.new("RGB", (w, h), tuple(rgb))


def test_fused_vector_is_the_weighted_concatenation(parts, tmp_path):
    a, b = parts
    ex = Extractor(preset_from_toml(fusion_toml(a, b)))
    solid(64, 48, (255, 0, 51)).save(tmp_path / "x.png")
    v = ex.describe(tmp_path / "x.png")
    # A: [255, 0, 51, 256] normalised, scaled by sqrt(1/4); B: (1, -1, -0.6) normalised, scaled by sqrt(3/4)
    want = np.concatenate([0.5 * unit([255, 0, 51, 256]), np.sqrt(0.75) * unit([1, -1, -0.6])])
    np.testing.assert_allclose(v, want, rtol=1e-5, atol=1e-7)
    assert abs(np.linalg.norm(v) - 1) < 1e-6


def test_inner_product_is_the_weighted_mean_of_the_parts_cosines(parts, tmp_path):
    a, b = parts
    ex = Extractor(preset_from_toml(fusion_toml(a, b)))
    solid(64, 48, (200, 10, 10)).save(tmp_path / "p.png")
    solid(40, 40, (10, 10, 200)).save(tmp_path / "q.png")
    p, q = ex.describe(tmp_path / "p.png"), ex.describe(tmp_path / "q.png")
    cos_a = unit([200, 10, 10, 256]) @ unit([10, 10, 200, 256])
    to_b = lambda rgb: unit((np.array(rgb) / 255 - 0.5) / 0.5)  # noqa: E731
    cos_b = to_b([200, 10, 10]) @ to_b([10, 10, 200])
    assert float(p @ q) == pytest.approx(0.25 * cos_a + 0.75 * cos_b, abs=1e-6)


def test_index_and_search_rank_by_the_fused_score(parts, tmp_path):
    a, b = parts
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, rgb in (("red", (220, 20, 20)), ("green", (20, 220, 20)), ("blue", (20, 20, 220))):
        solid(80, 60, rgb).save(photos / f"{name}.png")
    solid(50, 50, (200, 40, 30)).save(tmp_path / "query.png")
    with Index.create(tmp_path / "ab.index", preset_from_toml(fusion_toml(a, b))) as idx:
        idx.add(sorted(photos.glob("*.png")), root=photos)
        hits = search(idx, tmp_path / "query.png", k=3)
    assert [h.name for h in hits][0] == "red.png"
    ex = Extractor(preset_from_toml(fusion_toml(a, b)))
    q = ex.describe(tmp_path / "query.png")
    for h in hits:
        assert h.score == pytest.approx(float(q @ ex.describe(photos / h.name)), abs=1e-5)


def test_pca_whitening_of_the_fused_vector_is_learned_on_the_training_images(parts, tmp_path):
    a, b = parts
    train = []
    rng = np.random.default_rng(0)
    for i in range(12):
        train.append(tmp_path / f"t{i}.png")
        solid(32 + 8 * (i % 3), 40, rng.integers(0, 256, 3)).save(train[-1])
    preset = preset_from_toml(fusion_toml(a, b, extra='[whitening]\nmethod = "pca"\ndim = 3\n'))
    assert preset.needs_training
    ex = Extractor(preset).fit(train)
    fused = np.stack([Extractor(preset_from_toml(fusion_toml(a, b))).describe(t) for t in train])
    mean = fused.mean(0)
    assert np.allclose(ex.whitening.mean_, mean, atol=1e-6)
    v = ex.describe(train[0])
    want = unit((fused[0] - ex.whitening.mean_) @ ex.whitening.projection_)
    assert v.shape == (3,)
    np.testing.assert_allclose(v, want, atol=1e-5)


def test_real_parts_sscd_distilled_and_spoc_lite0(tmp_path):
    photo = Image.fromarray(skimage_photo("coffee")[..., :3])
    photo.save(tmp_path / "coffee.png")
    preset = preset_from_toml('name = "f"\n[image]\nmax_size = 1024\n[features]\ntype = "fusion"\n'
                              'parts = "sscd-distilled, spoc-lite0"\nweights = [0.4, 0.6]\n[pooling]\nmethod = "none"\n')
    v = Extractor(preset).describe(tmp_path / "coffee.png")
    s = Extractor(load_preset("sscd-distilled")).describe(tmp_path / "coffee.png")
    c = Extractor(load_preset("spoc-lite0")).describe(tmp_path / "coffee.png")
    assert v.shape == (512 + 1280,)
    np.testing.assert_allclose(v, np.concatenate([np.sqrt(0.4) * s, np.sqrt(0.6) * c]), atol=1e-5)


def test_bad_fusions_are_refused_with_the_reason(parts):
    a, b = parts
    with pytest.raises(FusionError, match="features.weights has 1 values for 2 parts"):
        FusionFeatures(parts=f"{a}, {b}", weights=(1.0,))
    with pytest.raises(FusionError, match="features.parts is empty"):
        FusionFeatures(parts=" , ")
    with pytest.raises(FusionError, match="'rootsift-vlad' learns from training images"):
        FusionFeatures(parts=f"{a}, rootsift-vlad", weights=(1.0, 1.0))
    with pytest.raises(FusionError, match="unknown preset 'no-such-preset'"):
        FusionFeatures(parts=f"{a}, no-such-preset", weights=(1.0, 1.0))
    with pytest.raises(FusionError, match="each must be >= 0"):
        FusionFeatures(parts=f"{a}, {b}", weights=(1.0, -1.0))
