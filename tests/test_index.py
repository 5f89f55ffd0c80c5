import os

import numpy as np
import pytest

from instar import Index, list_images, search
from instar.index import IndexError_


def make_index(tmp_path, preset, photos, name="a.index"):
    idx = Index.create(tmp_path / name, preset, list_images(photos), trained_on="test photos")
    idx.add(list_images(photos), root=photos)
    return idx


def test_create_add_and_reopen(tmp_path, photos, fast_preset):
    idx = make_index(tmp_path, fast_preset, photos)
    assert len(idx) == 8 and idx.dim == 8 * 128
    v = np.asarray(idx.vectors)
    assert v.shape == (8, 1024) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    names = [r.name for r in idx.records()]
    assert "sub/retina.jpg" in names and all(len(r.sha256) == 64 for r in idx.records())
    idx.close()
    again = Index.open(tmp_path / "a.index")
    assert np.array_equal(np.asarray(again.vectors), v)
    assert again.meta("trained_on") == "test photos" and again.preset.sections == fast_preset.sections
    # the learned codebook came back too: describing gives the stored vector
    assert np.allclose(again.extractor.describe(photos / "coffee.jpg"), v[names.index("coffee.jpg")], atol=1e-6)


def test_each_photo_finds_itself_first(tmp_path, photos, fast_preset):
    idx = make_index(tmp_path, fast_preset, photos)
    for rec in idx.records():
        hits = search(idx, rec.path, k=3, expansion="none")
        assert hits[0].name == rec.name and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].box == (0.0, 0.0, float(rec.width), float(rec.height))


def test_add_skips_unchanged_and_redescribes_changed(tmp_path, photos, fast_preset):
    import shutil
    from PIL import Image
    coll = tmp_path / "coll"
    shutil.copytree(photos, coll)
    idx = make_index(tmp_path, fast_preset, coll)
    before = np.asarray(idx.vectors).copy()
    r = idx.add(list_images(coll), root=coll)
    assert (r.added, r.updated, r.unchanged) == (0, 0, 8)
    # change one file's content: its old row is tombstoned and a new row appended; committed rows never change
    Image.open(photos / "rocket.jpg").transpose(Image.FLIP_LEFT_RIGHT).save(coll / "rocket.jpg")
    old_row = next(rec.row for rec in idx.records() if rec.name == "rocket.jpg")
    r = idx.add(list_images(coll), root=coll)
    assert (r.added, r.updated, r.unchanged) == (0, 1, 7)
    after = np.asarray(idx.vectors)
    assert len(idx) == 8 and after.shape == (9, 1024)
    new_row = next(rec.row for rec in idx.records() if rec.name == "rocket.jpg")
    assert new_row == 8 and old_row not in idx.snapshot().live_rows().tolist()
    assert not np.allclose(after[new_row], before[old_row])
    assert np.array_equal(after[:8], before)  # no stored row moved or changed, the tombstoned one included
    assert idx.verify() == []
    # search finds every image first, each at its live row; the old version of the rocket is never returned
    for rec in idx.records():
        hits = search(idx, rec.path, k=9, expansion="none")
        assert hits[0].name == rec.name and hits[0].row == rec.row
        assert old_row not in [h.row for h in hits] and len(hits) == 8
    # adding new images appends without recomputing the old ones
    Image.open(photos / "coffee.jpg").rotate(90, expand=True).save(coll / "coffee_rot.jpg")
    r = idx.add(list_images(coll), root=coll)
    assert (r.added, r.updated, r.unchanged) == (1, 0, 8)
    assert np.array_equal(np.asarray(idx.vectors)[:9], after)


def test_remove_prune_and_re_add(tmp_path, photos, fast_preset):
    import shutil
    coll = tmp_path / "coll"
    shutil.copytree(photos, coll)
    idx = make_index(tmp_path, fast_preset, coll)
    before = np.asarray(idx.vectors).copy()
    removed = idx.remove(["coffee.jpg", str(coll / "rocket.jpg")])
    assert sorted(r.name for r in removed) == ["coffee.jpg", "rocket.jpg"] and len(idx) == 6
    hits = search(idx, coll / "coffee.jpg", k=8, expansion="none")
    assert len(hits) == 6 and "coffee.jpg" not in [h.name for h in hits]
    with pytest.raises(IndexError_, match="nope.jpg: not in the index"):
        idx.remove(["chelsea.jpg", "nope.jpg"])
    assert len(idx) == 6  # all or nothing
    (coll / "chelsea.jpg").unlink()
    assert [r.name for r in idx.prune()] == ["chelsea.jpg"] and len(idx) == 5
    # re-adding a removed file appends a fresh row with the same vector; stored rows never change
    r = idx.add(list_images(coll), root=coll)
    assert (r.added, r.updated, r.unchanged) == (2, 0, 5)
    v = np.asarray(idx.vectors)
    assert v.shape[0] == 10 and np.array_equal(v[:8], before)
    rows = {rec.name: rec.row for rec in idx.records()}
    assert rows["coffee.jpg"] >= 8 and rows["rocket.jpg"] >= 8 and "chelsea.jpg" not in rows


def test_interrupted_add_resumes_to_the_same_index(tmp_path, photos, fast_preset):
    full = make_index(tmp_path, fast_preset, photos, "full.index")
    state = full.extractor.state()

    # same learned model, so that only the add is compared
    part = Index.create(tmp_path / "part.index", fast_preset, list_images(photos))
    part.extractor.load_state(state)
    np.savez(tmp_path / "part.index" / "model.npz", **state)

    class Interrupt(KeyboardInterrupt):
        pass

    def stop_after_first_batch(n):
        raise Interrupt

    with pytest.raises(Interrupt):
        part.add(list_images(photos), root=photos, batch_size=3, on_batch=stop_after_first_batch)
    assert len(part) == 3  # one committed batch survived
    part.close()
    # simulate a crash half-way through writing the next batch's vectors: garbage after the committed rows
    column = tmp_path / "part.index" / "global.float32"
    with open(column, "ab") as f:
        f.write(b"\x7f" * 1000)
    resumed = Index.open(tmp_path / "part.index")
    # a reader never modifies: the tail stays until a writer (under the lock) cuts it
    assert os.path.getsize(column) == 3 * resumed.dim * 4 + 1000
    assert resumed.vectors.shape == (3, resumed.dim) and resumed.verify() == []
    report = resumed.add(list_images(photos), root=photos, batch_size=3)
    assert (report.added, report.unchanged) == (5, 3)
    a = {r.name: np.asarray(full.vectors)[r.row] for r in full.records()}
    b = {r.name: np.asarray(resumed.vectors)[r.row] for r in resumed.records()}
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert sorted(r.name for r in resumed.records()) == sorted(r.name for r in full.records())


def test_verify_finds_damaged_rows_and_reextract_restores_them(tmp_path, photos, fast_preset):
    idx = make_index(tmp_path, fast_preset, photos)
    good = {r.name: np.array(idx.vectors[r.row]) for r in idx.records()}
    recs, dim = idx.records(), idx.dim
    with open(tmp_path / "a.index" / "global.float32", "r+b") as f:
        f.seek(recs[2].row * dim * 4)
        f.write(bytes(dim * 4))  # all zero, as the reader/writer race of issue 7 left rows
        f.seek(recs[5].row * dim * 4 + 17)
        f.write(b"\x42")  # one byte changed
    damaged = idx.verify()
    assert [rec.name for rec, _ in damaged] == [recs[2].name, recs[5].name]
    assert "all zero" in damaged[0][1] and "checksum mismatch" in damaged[1][1]
    report = idx.reextract([rec for rec, _ in damaged])
    assert (report.added, report.updated) == (0, 2) and idx.verify() == [] and len(idx) == 8
    for rec in idx.records():
        assert np.array_equal(idx.vectors[rec.row], good[rec.name]), rec.name


def test_images_without_usable_content_are_failures(tmp_path, photos, fast_preset):
    import shutil
    from PIL import Image
    coll = tmp_path / "coll"
    shutil.copytree(photos, coll)
    Image.new("RGB", (200, 150), (120, 120, 120)).save(coll / "blank.png")  # no keypoints: an all-zero VLAD
    Image.new("RGB", (3, 3), (10, 200, 10)).save(coll / "tiny.png")
    idx = make_index(tmp_path, fast_preset, coll)
    assert len(idx) == 8 and np.all(np.linalg.norm(np.asarray(idx.vectors), axis=1) > 0.99)
    failures = dict(idx.failures())
    assert "no usable content: its descriptor is all zero" in failures[str(coll / "blank.png")]
    assert "too small: the 3x3 image" in failures[str(coll / "tiny.png")]
    from instar import ImageLoadError
    with pytest.raises(ImageLoadError, match="blank.png: no usable content"):
        search(idx, coll / "blank.png")
    with pytest.raises(ValueError, match="k=0: the number of hits must be a whole number of at least 1"):
        search(idx, coll / "coffee.jpg", k=0)


def test_unreadable_files_are_recorded_not_fatal(tmp_path, photos, fast_preset):
    import shutil
    coll = tmp_path / "coll"
    shutil.copytree(photos, coll)
    (coll / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    idx = make_index(tmp_path, fast_preset, coll)
    assert len(idx) == 8
    (path, reason), = idx.failures()
    assert path.endswith("broken.jpg") and reason


def test_truncated_vector_file_is_reported(tmp_path, photos, fast_preset):
    idx = make_index(tmp_path, fast_preset, photos)
    idx.close()
    with open(tmp_path / "a.index" / "global.float32", "r+b") as f:
        f.truncate(100)
    with pytest.raises(IndexError_, match="global.float32: holds 100 bytes but the 8 committed items"):
        Index.open(tmp_path / "a.index")


def test_open_and_create_errors(tmp_path, fast_preset):
    with pytest.raises(IndexError_, match="not an instar index"):
        Index.open(tmp_path)
    (tmp_path / "exists.index").mkdir()
    with pytest.raises(IndexError_, match="already exists"):
        Index.create(tmp_path / "exists.index", fast_preset, [])


def test_interrupted_create_leaves_nothing(tmp_path, fast_preset, photos):
    with pytest.raises(ValueError, match="needs training images"):
        Index.create(tmp_path / "x.index", fast_preset, [])
    assert list(tmp_path.iterdir()) == []


def test_concurrent_add_is_refused(tmp_path, photos, fast_preset):
    import fcntl
    idx = make_index(tmp_path, fast_preset, photos)
    with open(tmp_path / "a.index" / ".lock", "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(IndexError_, match="another process"):
            idx.add(list_images(photos))
