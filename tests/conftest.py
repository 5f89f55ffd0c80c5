import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "stereo_motorcycle", "retina")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A real headless Chromium (Debian's chromium + chromium-driver) through selenium, with the flags this
    sandbox needs (no sandbox, no background networking: the machine has no network)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "headless Chromium is needed: apt-get install chromium chromium-driver (make test does it as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1200,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()



def skimage_photo(name: str) -> np.ndarray:
    from skimage import data
    out = getattr(data, name)()
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository (CI puts it there); its absence is an error, not a skip."""
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} is missing: clone the project with ../shared beside it"
    return SHARED_DATA


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """A folder of 8 real photographs (scikit-image's), shrunk to 256 px, plus one in a subfolder."""
    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(_SOURCES):
        im = Image.fromarray(skimage_photo(name)[..., :3])
        im.thumbnail((256, 256))
        target = root / ("sub" if i == 7 else "") / f"{name}.jpg"
        target.parent.mkdir(exist_ok=True)
        im.save(target, quality=92)
    return root


@pytest.fixture
def fast_preset():
    """The weight-free default preset, scaled down for tests (small codebook, few keypoints)."""
    from instar.presets import load_preset
    return load_preset("rootsift-vlad").with_overrides({"pooling.k": "8", "features.max_keypoints": "300", "image.max_size": "256"})


# --- `instar serve` on 127.0.0.1 (tests/serving.py): one server per index, shared by the service tests -----
@pytest.fixture(scope="session")
def served(tmp_path_factory, photos):
    """A real server over the photos indexed with the fast default preset (global descriptors: whole-image
    boxes), with a bearer token, the photos' folder allowed for POST /images, a 1 MiB body limit and a 4 MP
    pixel limit (so limits are hit with small files)."""
    from serving import FAST, build_index, start_server
    work = tmp_path_factory.mktemp("served")
    index = build_index(work / "photos.index", photos, "rootsift-vlad", FAST)
    allowed = work / "allowed"
    allowed.mkdir()
    server = start_server(index, work, token="test-token",
                          extra=["--allow-folder", str(allowed), "--max-upload-mb", "1", "--max-k", "50"],
                          env={"INSTAR_MAX_PIXELS": "4000000"})
    server.allowed = allowed
    yield server
    server.stop()


@pytest.fixture(scope="session")
def served_regions(tmp_path_factory, photos):
    """A real server over the photos indexed with a CNN preset that stores region boxes (random VGG16, R-MAC
    regions, RPA-max, CA-SR re-ranking): hits carry boxes that are not the whole image."""
    from serving import REGIONS, build_index, start_server
    work = tmp_path_factory.mktemp("served-regions")
    index = build_index(work / "regions.index", photos, "mac", REGIONS)
    server = start_server(index, work)
    yield server
    server.stop()
