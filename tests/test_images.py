import numpy as np
import pytest
from PIL import Image

from instar.extract import images as imgs


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = imgs.load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)  # width and height swapped
    arr = np.asarray(out)
    assert arr[:10].mean() > 200 and arr[-10:].mean() < 50  # white half now on top


def test_grey_and_palette_images_become_rgb(tmp_path):
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((8, 8), 77, np.uint8)).convert("P").save(tmp_path / "p.gif")
    for name in ("g.png", "p.gif"):
        im = imgs.load_image(tmp_path / name)
        assert im.mode == "RGB" and np.asarray(im)[0, 0].tolist() == [77, 77, 77]


def test_damaged_file_is_rejected_naming_it(shared_data):
    bad = shared_data / "ukbench-dups" / "mixed_images" / "ukbench09268_corrupt.jpg"
    assert bad.is_file(), f"fixture missing: {bad}"
    with pytest.raises(imgs.ImageLoadError) as e:
        imgs.load_image(bad)
    assert "ukbench09268_corrupt.jpg" in str(e.value)


def test_non_image_and_missing_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(imgs.ImageLoadError, match="notes.jpg: not an image"):
        imgs.load_image(tmp_path / "notes.jpg")
    with pytest.raises(imgs.ImageLoadError, match="no such file"):
        imgs.load_image(tmp_path / "absent.jpg")


def test_resize_longest_only_shrinks():
    im = Image.new("RGB", (2000, 1000))
    assert imgs.resize_longest(im, 1024).size == (1024, 512)
    small = Image.new("RGB", (300, 200))
    assert imgs.resize_longest(small, 1024).size == (300, 200)


def test_prepare_crops_at_full_resolution_then_resizes(tmp_path):
    a = np.zeros((1000, 2000, 3), np.uint8)
    a[100:300, 200:600] = 200
    Image.fromarray(a).save(tmp_path / "big.png")
    out = imgs.prepare(tmp_path / "big.png", max_size=1024, box=(200, 100, 600, 300))
    assert out.size == (400, 200)  # the crop is small enough to stay at full resolution
    assert np.asarray(out).min() == 200


def test_bad_boxes():
    with pytest.raises(ValueError, match="empty"):
        imgs.check_box((10, 10, 5, 20), 100, 100)
    with pytest.raises(ValueError, match="outside"):
        imgs.check_box((200, 200, 300, 300), 100, 100)
    with pytest.raises(ValueError, match="4 numbers"):
        imgs.check_box((1, 2, 3), 100, 100)
    assert imgs.check_box((-5, 10, 150, 20), 100, 100) == (0.0, 10.0, 100.0, 20.0)


def test_list_images_recursive_and_sorted(photos):
    found = imgs.list_images(photos)
    assert len(found) == 8 and found == sorted(found)
    assert any(p.parent.name == "sub" for p in found)


def test_wide_greyscale_is_scaled_to_8_bit_by_the_documented_rule():
    ramp = np.linspace(0, 1, 64, dtype=np.float64).reshape(8, 8)
    cases = [  # (image, expected 8-bit values)
        (Image.frombytes("I;16B", (8, 8), (ramp * 65535).astype(">u2").tobytes()), ramp * 255),   # by bit depth
        (Image.fromarray((ramp * 65535).astype(np.uint16)), ramp * 255),
        (Image.fromarray((ramp * 200).astype(np.int32), mode="I"), np.floor(ramp * 200)),         # 0..255: kept
        (Image.fromarray((ramp * 60000).astype(np.int32), mode="I"), np.floor(ramp * 60000) * 255 / 65535),
        (Image.fromarray((ramp * 1e6 - 5e5).astype(np.int32), mode="I"), ramp * 255),              # stretched
        (Image.fromarray(ramp.astype(np.float32), mode="F"), ramp * 255),                          # 0..1 floats
    ]
    for im, expected in cases:
        out = np.asarray(imgs.to_8bit_rgb(im))
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8
        assert np.abs(out[..., 0].astype(float) - expected).max() <= 1.0, im.mode
