import os
import sqlite3

import numpy as np
import pytest

from instar import Index, list_images, search
from instar.index import IndexError_
from instar.search import search_vectors


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
    # change one file's content: its row is rewritten in place, nothing else moves
    Image.open(photos / "rocket.jpg").transpose(Image.FLIP_LEFT_RIGHT).save(coll / "rocket.jpg")
    row = next(rec.row for rec in idx.records() if rec.name == "rocket.jpg")
    r = idx.add(list_images(coll), root=coll)
    assert (r.added, r.updated, r.unchanged) == (0, 1, 7)
    after = np.asarray(idx.vectors)
    assert len(idx) == 8
    assert not np.allclose(after[row], before[row])
    others = [i for i in range(8) if i != row]
    assert np.array_equal(after[others], before[others])
    # adding new images appends without recomputing the old ones
    Image.open(photos / "coffee.jpg").rotate(90, expand=True).save(coll / "coffee_rot.jpg")
    r = idx.add(list_images(coll), root=coll)
    assert (r.added, r.updated, r.unchanged) == (1, 0, 8)
    assert np.array_equal(np.asarray(idx.vectors)[:8], after)


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
    with open(tmp_path / "part.index" / "vectors.f32", "ab") as f:
        f.write(b"\x7f" * 1000)
    resumed = Index.open(tmp_path / "part.index")
    assert os.path.getsize(tmp_path / "part.index" / "vectors.f32") == 3 * resumed.dim * 4
    report = resumed.add(list_images(photos), root=photos, batch_size=3)
    assert (report.added, report.unchanged) == (5, 3)
    a = {r.name: np.asarray(full.vectors)[r.row] for r in full.records()}
    b = {r.name: np.asarray(resumed.vectors)[r.row] for r in resumed.records()}
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert sorted(r.name for r in resumed.records()) == sorted(r.name for r in full.records())


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
    with open(tmp_path / "a.index" / "vectors.f32", "r+b") as f:
        f.truncate(100)
    with pytest.raises(IndexError_, match="vectors.f32: holds 100 bytes but 8 images"):
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


def test_query_expansion_math():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:2] + 0.1
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s0, r0 = search_vectors(x, q, 5)
    s_exact = q @ x.T
    assert np.array_equal(r0, np.argsort(-s_exact, axis=1)[:, :5])
    _, r_aqe = search_vectors(x, q, 5, expansion="aqe", qe_top=3)
    q_aqe = q + x[r0[:, :3]].sum(axis=1)
    assert np.array_equal(r_aqe, np.argsort(-(q_aqe @ x.T), axis=1)[:, :5])
    _, r_a = search_vectors(x, q, 5, expansion="alpha-qe", qe_top=3, alpha=3.0)
    w = np.maximum(s0[:, :3], 0) ** 3
    q_a = q + (w[..., None] * x[r0[:, :3]]).sum(axis=1)
    assert np.array_equal(r_a, np.argsort(-(q_a @ x.T), axis=1)[:, :5])


def test_rerank_slot_reorders_candidates():
    x = np.eye(4, dtype=np.float32)
    q = np.array([[1.0, 0.5, 0.2, 0.0]], np.float32)
    reverse = lambda qs, rows, scores: (rows[:, ::-1], scores[:, ::-1])
    _, rows = search_vectors(x, q, 4, rerank=reverse, rerank_top=3)
    assert rows.tolist() == [[2, 1, 0, 3]]
