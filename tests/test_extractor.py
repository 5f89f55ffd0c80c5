import numpy as np
import pytest
import torch

from instar import list_images, load_preset
from instar.extract.extractor import Extractor
from instar.extract.features.cnn import feature_maps
from instar.extract.pooling.functional import gem, rmac
from instar.extract.regions import rmac_regions
from instar.core.norms import l2n

SMALL = {"features.weights": "random:0", "image.max_size": "128"}


@pytest.mark.parametrize("name", ["mac", "spoc", "gem", "crow", "rmac-vgg16", "ipa-sum-vgg16"])
def test_cnn_presets_describe_unit_vectors(name, photos):
    preset = load_preset(name).with_overrides(SMALL | {"features.arch": "resnet50"} if name == "gem" else SMALL)
    ex = Extractor(preset).fit(list_images(photos))
    paths = list_images(photos)
    v = np.stack([ex.describe(p) for p in paths[:3]])
    assert v.dtype == np.float32 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v.shape[1] == ex.whitening.dim_
    # a learned stage round-trips through its stored state
    again = Extractor(preset).load_state(ex.state())
    assert np.allclose(again.describe(paths[0]), v[0], atol=1e-5)


def test_multiscale_gem_is_normalised_sum_of_scales(photos):
    preset = load_preset("gem").with_overrides(SMALL | {"features.arch": "resnet50", "whitening.method": "none"})
    ex = Extractor(preset)
    path = list_images(photos)[0]
    image = ex.load(path)
    maps = feature_maps(ex.model, image, preset["features"]["scales"])
    assert len(maps) == 3 and maps[0].shape[-1] > maps[2].shape[-1]
    expected = l2n(sum(l2n(gem(m, 3.0)) for m in maps)).numpy()
    assert np.allclose(ex.describe(path), expected, atol=1e-5)


def test_rmac_whitening_is_learned_on_region_vectors(photos):
    preset = load_preset("rmac-vgg16").with_overrides(SMALL)
    ex = Extractor(preset).fit(list_images(photos))
    path = list_images(photos)[1]
    fmap = feature_maps(ex.model, ex.load(path), [1.0])[0]
    regions = rmac_regions(fmap.shape[1], fmap.shape[2], 3)
    expected = rmac(fmap, regions, ex.whitening.transform).numpy()
    assert np.allclose(ex.describe(path), expected, atol=1e-5)
    # 8 training images x several regions each: more training vectors than images
    assert ex.whitening.dim_ > len(list_images(photos))


def test_describing_before_fitting_is_an_error(photos):
    ex = Extractor(load_preset("mac").with_overrides(SMALL))
    with pytest.raises(RuntimeError, match="must be fitted"):
        ex.describe(list_images(photos)[0])


def test_box_query_describes_the_crop(photos, fast_preset):
    ex = Extractor(fast_preset).fit(list_images(photos))
    path = photos / "astronaut.jpg"
    from instar.extract.images import crop_box, load_image, resize_longest
    crop = resize_longest(crop_box(load_image(path), (20, 20, 200, 200)), 256)
    assert np.allclose(ex.describe(path, box=(20, 20, 200, 200)), ex.describe_image(crop))
    assert not np.allclose(ex.describe(path, box=(20, 20, 200, 200)), ex.describe(path))
