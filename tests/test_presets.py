import pytest

from instar.presets import PresetError, builtin_names, load_preset, preset_from_toml

REQUIRED = {"mac", "spoc", "gem", "crow", "rmac-vgg16", "ipa-sum-vgg16", "rootsift-vlad"}


def test_required_presets_ship_and_parse():
    assert REQUIRED <= set(builtin_names())
    for name in builtin_names():
        p = load_preset(name)
        assert p.name == name and p.description
        # the stored TOML text reads back to the same preset
        assert preset_from_toml(p.to_toml()).sections == p.sections


def test_preset_contents_follow_the_papers():
    r = load_preset("rmac-vgg16")
    assert (r["features"]["arch"], r["pooling"]["method"]) == ("vgg16", "rmac")
    assert (r["regions"]["method"], r["regions"]["levels"], r["regions"]["overlap"]) == ("rmac", 3, 0.4)
    ipa = load_preset("ipa-sum-vgg16")
    assert ipa["pooling"]["method"] == "sum" and ipa["whitening"]["method"] == "pca"
    d = load_preset("rootsift-vlad")
    assert d["features"]["type"] == "rootsift" and d["pooling"]["method"] == "vlad"


def test_overrides_are_typed_and_checked():
    p = load_preset("gem").with_overrides({"pooling.p": "4.5", "features.scales": "1,0.5", "features.weights": "random:3"})
    assert p["pooling"]["p"] == 4.5 and p["features"]["scales"] == [1.0, 0.5] and p["features"]["weights"] == "random:3"
    with pytest.raises(PresetError, match="pooling.q"):
        load_preset("gem").with_overrides({"pooling.q": "1"})
    with pytest.raises(PresetError, match="not a valid int"):
        load_preset("rootsift-vlad").with_overrides({"pooling.k": "many"})
    # a key of another entry of the same stage is refused, naming what this entry takes
    with pytest.raises(PresetError, match=r"pooling.k.*method 'gem' takes: pooling.p"):
        load_preset("gem").with_overrides({"pooling.k": "64"})


def test_overriding_a_selector_switches_the_entry_and_keeps_what_fits():
    p = load_preset("gem").with_overrides({"pooling.method": "crow", "pooling.a": "3"})
    assert p["pooling"] == {"method": "crow", "a": 3.0, "b": 2.0}
    p = load_preset("rmac-vgg16").with_overrides({"regions.levels": "2"})
    assert p["regions"]["levels"] == 2
    with pytest.raises(PresetError, match="pools over regions"):
        load_preset("rmac-vgg16").with_overrides({"regions.method": "none"})
    with pytest.raises(PresetError, match=r"with overrides: features.arch = 'alexnet' is not one of vgg16"):
        load_preset("gem").with_overrides({"features.arch": "alexnet"})
    with pytest.raises(PresetError, match=r"features.layer 'conv4' is not a layer of vgg16"):
        load_preset("mac").with_overrides({"features.layer": "conv4"})


def test_bad_preset_files_name_file_and_key(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\n[pooling]\nmethod = "maxx"\n')
    with pytest.raises(PresetError, match=r"mine.toml: pooling.method = 'maxx' is not one of"):
        load_preset(f)
    f.write_text('name = "mine"\n[pooling]\nwidth = 3\n')
    with pytest.raises(PresetError, match="mine.toml: unknown key pooling.width"):
        load_preset(f)
    f.write_text('name = "mine"\n[features]\ntype = "rootsift"\n[pooling]\nmethod = "gem"\n')
    with pytest.raises(PresetError, match="does not fit"):
        load_preset(f)
    f.write_text("name = [unclosed")
    with pytest.raises(PresetError, match="not valid TOML"):
        load_preset(f)
    with pytest.raises(PresetError, match="unknown preset 'nope'"):
        load_preset("nope")
