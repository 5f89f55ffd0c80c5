"""Index.add_descriptions: descriptions made elsewhere (another process, a cluster, a user's extractor) stored with
the same checks as `add`, giving the same index as describing the files in place."""
import dataclasses

import numpy as np
import pytest

from instar import Index, list_images, search
from instar.store.columns import GLOBAL


def test_descriptions_made_elsewhere_give_the_same_index_as_add(tmp_path, photos, fast_preset):
    files = list_images(photos)
    direct = Index.create(tmp_path / "direct.index", fast_preset, files)
    direct.add(files, root=photos)
    elsewhere = Index.create(tmp_path / "elsewhere.index", fast_preset, files)
    described = [elsewhere.describe_file(p, name=p.relative_to(photos).as_posix()) for p in files]
    report = elsewhere.add_descriptions(described, batch_size=3)
    assert report.added == len(files) and not report.failed
    assert [(r.name, r.sha256) for r in elsewhere.records()] == [(r.name, r.sha256) for r in direct.records()]
    assert np.array_equal(np.asarray(elsewhere.vectors), np.asarray(direct.vectors))
    hits_a = search(direct, files[0], k=5)
    hits_b = search(elsewhere, files[0], k=5)
    assert [(h.name, h.score) for h in hits_a] == [(h.name, h.score) for h in hits_b]
    # the same descriptions again: unchanged, nothing stored twice
    again = elsewhere.add_descriptions(described)
    assert again.unchanged == len(files) and again.added == 0 and len(elsewhere) == len(files)


def test_a_bad_description_is_refused_naming_it_and_nothing_of_its_batch_is_stored(tmp_path, photos, fast_preset):
    files = list_images(photos)
    idx = Index.create(tmp_path / "x.index", fast_preset, files)
    good = [idx.describe_file(p) for p in files[:3]]
    dim = good[0].data[GLOBAL].shape[0]
    cases = [
        ({GLOBAL: np.zeros(dim, np.float32)}, "all zero"),
        ({GLOBAL: np.full(dim, np.nan, np.float32)}, "NaN"),
        ({GLOBAL: np.ones(dim, np.float64)}, "must be float32"),
        ({GLOBAL: np.ones(dim + 1, np.float32)}, "shape"),
        ({GLOBAL: np.ones(dim, np.float32), "regions": np.ones((2, 3), np.float32)}, "unknown: \\['regions'\\]"),
        ({}, "missing: \\['global'\\]"),
    ]
    idx.add_descriptions(good[:1])
    for data, message in cases:
        bad = dataclasses.replace(good[2], data=data, name="bad.jpg")
        with pytest.raises(ValueError, match=message) as e:
            idx.add_descriptions([good[1], bad], batch_size=10)
        assert "bad.jpg" in str(e.value)
        assert [r.path for r in idx.records()] == [good[0].path]
    with pytest.raises(ValueError, match="width and height"):
        idx.add_descriptions([dataclasses.replace(good[1], width=0)])
