"""Multi-process and batched extraction store the same rows as the one-process path (real worker processes)."""
import pytest
import torch

from instar import Index, list_images
from instar.presets import load_preset


def rows_of(index: Index) -> list[tuple]:
    """Every live row: its number, name, size, content hash and the bytes of all its columns."""
    snap = index.snapshot()
    return [(r.row, r.name, r.width, r.height, r.sha256, snap.row_bytes(r.row)) for r in index.records()]


def _tiny_cnn():
    """A CNN preset small enough for tests: random Lite0 weights, 128 px, two scales, GeM."""
    return load_preset("gem-lite0").with_overrides({"features.weights": "random:0", "image.max_size": "128",
                                                    "features.scales": [1.0, 0.5]})


def _build(tmp_path, name, preset, photos, **add):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: oneDNN's sums depend on it (instar.index.describe)
    try:
        idx = Index.create(tmp_path / name, preset, list_images(photos))
        idx.add(list_images(photos), root=photos, **add)
    finally:
        torch.set_num_threads(threads)
    return idx


@pytest.mark.parametrize("kind", ["fast", "cnn"])
def test_workers_and_batches_store_the_rows_of_one_process(tmp_path, photos, fast_preset, kind):
    preset = fast_preset if kind == "fast" else _tiny_cnn()
    single = _build(tmp_path, "single.index", preset, photos, batch_size=3)
    multi = _build(tmp_path, "multi.index", preset, photos, batch_size=3, workers=2, threads=1)
    batched = _build(tmp_path, "batched.index", preset, photos, batch_size=4, workers=1, threads=1)
    expected = rows_of(single)
    assert len(expected) == len(list_images(photos))
    assert rows_of(multi) == expected
    assert rows_of(batched) == expected
    for idx in (single, multi, batched):
        idx.close()


def test_same_size_images_share_one_forward_and_match_one_at_a_time(photos):
    from instar.extract import images as imgs
    from instar.extract.extractor import Extractor
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ex = Extractor(_tiny_cnn())
        small = [imgs.fit_image(imgs.load_image(p), 128, path=p) for p in list_images(photos)]
        same = [im for im in small if im.size == small[0].size] + [small[0].copy()]
        batched = ex.features_batch(same)
        for im, views in zip(same, batched):
            for a, b in zip(ex.features(im), views):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_bad_runtime_options_are_refused(tmp_path, photos, fast_preset):
    idx = Index.create(tmp_path / "x.index", fast_preset, list_images(photos))
    with pytest.raises(ValueError, match="workers=-1"):
        idx.add(list_images(photos), workers=-1)
    with pytest.raises(ValueError, match="device 'tpu'"):
        idx.add(list_images(photos), device="tpu")
    assert len(idx) == 0


def test_the_default_path_never_imports_ray():
    import subprocess
    import sys
    code = ("import sys, instar, instar.cli, instar.distributed.jobs, instar.search.sharded, instar.index.shards; "
            "sys.exit(1 if [m for m in sys.modules if m == 'ray' or m.startswith('ray.')] else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_an_unusable_device_is_refused_before_anything_is_created(tmp_path, photos):
    from typer.testing import CliRunner

    from instar.cli import app
    for device, says in (("tpu", "expected cpu, cuda, cuda:N or mps"), ("cuda", "torch sees no CUDA device")):
        r = CliRunner().invoke(app, ["index", str(photos), "--out", str(tmp_path / "x.index"), "--device", device])
        assert r.exit_code == 2 and says in r.output, r.output
        assert not (tmp_path / "x.index").exists()
