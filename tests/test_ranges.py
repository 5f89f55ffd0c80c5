"""Every numeric parameter of every registered entry declares its range next to its default, and the preset
parser refuses a value outside it, naming section.key and the range: in a TOML file, through the CLI's --set
(exit 2) and through the service's `set` field (422)."""
import subprocess
import sys

import httpx
import pytest

from instar.core.registry import SECTIONS, TRUNKS, Range, is_numeric
from instar.presets import PresetError, load_preset, preset_from_toml
from test_server_api import assert_error


def test_every_numeric_parameter_declares_a_range():
    missing = [f"{reg.stage}.{name}.{key}" for reg in [*SECTIONS.values(), TRUNKS] for name in reg.names()
               for key, default in reg.entry(name).params.items()
               if is_numeric(default) and not isinstance(reg.entry(name).ranges.get(key), Range)]
    assert missing == []
    # and every default lies in its own range
    for reg in [*SECTIONS.values(), TRUNKS]:
        for name in reg.names():
            entry = reg.entry(name)
            for key, allowed in entry.ranges.items():
                default = entry.params[key]
                assert all(allowed.contains(v) for v in (default if isinstance(default, tuple) else [default])), key


BAD = [("expansion", "alpha-qe", "alpha", "nan", ">= 0"), ("expansion", "alpha-qe", "alpha", "-1e308", ">= 0"),
       ("expansion", "alpha-qe", "top", "-5", ">= 1"), ("rerank", "sp", "min_similarity", "inf", "<= 1"),
       ("search", None, "k", "0", ">= 1"), ("pooling", "vlad", "power", "0", "> 0"),
       ("features", "cnn", "scales", "[1.0, -0.5]", "> 0")]


@pytest.mark.parametrize("section, method, key, value, expected", BAD)
def test_toml_values_out_of_range_are_refused(section, method, key, value, expected):
    toml = f'name = "t"\n[{section}]\n' + (f'method = "{method}"\n' if method else "")
    if section == "features":
        toml = 'name = "t"\n[features]\ntype = "cnn"\n[pooling]\nmethod = "gem"\n'.replace(
            "[pooling]", f"{key} = {value}\n[pooling]")
    else:
        toml += f"{key} = {value.replace('nan', 'nan').replace('inf', 'inf')}\n"
    with pytest.raises(PresetError) as e:
        preset_from_toml(toml, "my.toml")
    assert f"my.toml: {section}.{key} = " in str(e.value) and expected in str(e.value), str(e.value)


@pytest.mark.parametrize("setting, expected", [("expansion.alpha=nan", "expansion.alpha = nan"),
                                               ("expansion.alpha=-1e308", ">= 0"), ("expansion.top=-5", ">= 1"),
                                               ("pooling.k=-3", "pooling.k = -3")])
def test_cli_set_out_of_range_exits_2(photos, tmp_path, setting, expected):
    extra = ["--set", "expansion.method=alpha-qe"] if setting.startswith("expansion") else []
    p = subprocess.run([sys.executable, "-m", "instar", "index", str(photos), "--out", str(tmp_path / "x.index"), "--preset", "rootsift-vlad",
                        *extra, "--set", setting], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert expected in p.stderr and "out of range" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "x.index").exists()


@pytest.mark.parametrize("settings, expected", [(["expansion.alpha=nan"], "expansion.alpha = nan"),
                                                (["expansion.alpha=-1e308"], ">= 0"),
                                                (["expansion.top=-5"], "expansion.top = -5"),
                                                (["rerank.top=0"], None)])
def test_http_set_out_of_range_is_422(served, photos, settings, expected):
    data = {"set": settings, "expansion": "alpha-qe"}
    r = httpx.post(served.url + "/search", data=data, timeout=60,
                   files={"image": ("q.jpg", (photos / "coffee.jpg").read_bytes(), "image/jpeg")})
    if expected is None:   # rerank.top for the preset's rerank 'none': no such key, also a 422
        assert_error(r, 422, "unknown key")
    else:
        body = assert_error(r, 422, "out of range")
        assert expected in body["detail"], body


def test_out_of_range_in_a_preset_file_through_the_cli(tmp_path, photos):
    bad = tmp_path / "bad.toml"
    bad.write_text(load_preset("rootsift-vlad").to_toml().replace("power = 0.5", "power = -1.0"))
    p = subprocess.run([sys.executable, "-m", "instar", "index", str(photos), "--out", str(tmp_path / "y.index"),
                        "--preset", str(bad)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"{bad}: pooling.power = -1.0 is out of range: expected > 0 and <= 1" in p.stderr, p.stderr
