"""The append-only column store on its own: fixed and ragged columns, tombstones, snapshots, repair, integrity."""
import os
import zlib

import numpy as np
import pytest

from instar.store import Column, Store, StoreBusy, StoreError, StoreIntegrityError, connect

COLUMNS = (Column("global", "float32", (None,)), Column("boxes", "float32", (4,), ragged=True),
           Column("codes", "uint8", (8,)))


def new_store(tmp_path, columns=COLUMNS):
    db = connect(tmp_path / "s.sqlite", create=True)
    Store.initialise(tmp_path, db, columns)
    return Store(tmp_path, db)


def reader(tmp_path):
    """A second, independent reader (its own connection), as another process would have."""
    return Store(tmp_path, connect(tmp_path / "s.sqlite"))


def item(seed, n_boxes, dim=6):
    rng = np.random.default_rng(seed)
    return {"global": rng.normal(size=dim).astype(np.float32),
            "boxes": rng.uniform(0, 100, size=(n_boxes, 4)).astype(np.float32),
            "codes": rng.integers(0, 256, size=8, dtype=np.uint8)}


def test_fixed_and_ragged_columns_round_trip(tmp_path):
    s = new_store(tmp_path)
    data = {"a": item(0, 3), "b": item(1, 0), "c": item(2, 5)}
    with s.writer() as w:
        appended = w.append(list(data.items()))
    assert [(a.row, a.key, a.replaced) for a in appended] == [(0, "a", None), (1, "b", None), (2, "c", None)]
    snap = reader(tmp_path).snapshot()
    assert snap.n_rows == 3 and snap.live_rows().tolist() == [0, 1, 2]
    assert snap.columns["global"].shape == (6,)  # fixed by the first append
    assert snap.column("global").shape == (3, 6) and snap.column("boxes").shape == (8, 4)
    for row, (key, d) in enumerate(data.items()):
        for name in d:
            assert np.array_equal(snap.get(name, row), d[name]), (key, name)
        expected = zlib.crc32(b"".join(np.ascontiguousarray(d[c.name]).tobytes() for c in COLUMNS))
        assert zlib.crc32(snap.row_bytes(row)) == expected
    assert snap.spans("boxes")[1].tolist() == [3, 0, 5]
    assert s.verify() == []
    assert os.path.getsize(tmp_path / "boxes.float32") == 8 * 4 * 4


def test_update_is_tombstone_plus_append_and_old_snapshots_stay_valid(tmp_path):
    s = new_store(tmp_path)
    with s.writer() as w:
        w.append([("a", item(0, 2)), ("b", item(1, 1))])
    held = reader(tmp_path).snapshot()
    held_global = held.column("global")
    old = np.array(held_global)
    with s.writer() as w:
        (a,) = w.append([("a", item(9, 4))])
        assert (a.row, a.replaced) == (2, 0)
        assert w.remove([1]) == 1 and w.remove([1]) == 0
    # the held snapshot still reads exactly what it read before: committed bytes are immutable
    assert np.array_equal(held_global, old) and held.n_rows == 2 and held.live_rows().tolist() == [0, 1]
    now = reader(tmp_path).snapshot()
    assert now.n_rows == 3 and now.live_rows().tolist() == [2]
    assert np.array_equal(now.column("global")[:2], old)
    assert np.array_equal(now.get("boxes", 2), item(9, 4)["boxes"])
    assert s.live_row("a") == 2 and s.live_row("b") is None
    # a removed key added again gets a fresh row
    with s.writer() as w:
        (b,) = w.append([("b", item(1, 1))])
    assert (b.row, b.replaced) == (3, None) and s.live_count() == 2


def test_readers_never_see_or_cut_uncommitted_bytes_repair_happens_under_the_lock(tmp_path):
    s = new_store(tmp_path)
    with s.writer() as w:
        w.append([("a", item(0, 2))])
        committed = os.path.getsize(tmp_path / "global.float32")
        staged = w.stage([("b", item(1, 3))])  # written and fsync'ed, not committed
        grown = os.path.getsize(tmp_path / "global.float32")
        assert grown > committed
        r = reader(tmp_path)
        snap = r.snapshot()
        assert snap.n_rows == 1 and snap.column("global").shape == (1, 6)
        assert os.path.getsize(tmp_path / "global.float32") == grown  # the reader cut nothing
        w.commit(staged)
    assert r.snapshot().n_rows == 2
    # bytes an interrupted writer left behind: readers leave them, the next writer cuts them under its lock
    with open(tmp_path / "global.float32", "ab") as f:
        f.write(b"\x7f" * 10)
    assert r.snapshot().n_rows == 2 and os.path.getsize(tmp_path / "global.float32") == 2 * 24 + 10
    with s.writer():
        assert os.path.getsize(tmp_path / "global.float32") == 2 * 24


def test_a_writer_whose_bytes_vanish_or_change_commits_nothing(tmp_path):
    s = new_store(tmp_path)
    with s.writer() as w:
        w.append([("a", item(0, 1))])
        staged = w.stage([("b", item(1, 1)), ("c", item(2, 1))])
        with open(tmp_path / "global.float32", "r+b") as f:  # what the old reader's repair did to a writer
            f.truncate(24)
        with pytest.raises(StoreIntegrityError, match=r"global\.float32: holds 24 bytes but the rows just written end"):
            w.commit(staged)
        staged = w.stage([("b", item(1, 1))])
        with open(tmp_path / "codes.uint8", "r+b") as f:
            f.seek(8)
            f.write(bytes(8))
        with pytest.raises(StoreIntegrityError, match=r"codes\.uint8: the bytes of rows 1\.\.1 changed"):
            w.commit(staged)
    snap = reader(tmp_path).snapshot()
    assert snap.n_rows == 1 and s.verify() == []


def test_one_writer_at_a_time(tmp_path):
    s = new_store(tmp_path)
    other = reader(tmp_path)
    with s.writer():
        with pytest.raises(StoreBusy, match="another process is writing"):
            with other.writer():
                pass
    with other.writer() as w:
        w.append([("a", item(0, 0))])


def test_verify_finds_zeroed_and_altered_rows(tmp_path):
    s = new_store(tmp_path)
    with s.writer() as w:
        w.append([(k, item(i, 2)) for i, k in enumerate("abcd")])
    with open(tmp_path / "global.float32", "r+b") as f, open(tmp_path / "boxes.float32", "r+b") as g, \
            open(tmp_path / "codes.uint8", "r+b") as h:
        f.seek(1 * 24)
        f.write(bytes(24))
        g.seek(1 * 2 * 16)
        g.write(bytes(32))
        h.seek(1 * 8)
        h.write(bytes(8))  # row 1: every byte zero
        g.seek(3 * 2 * 16 + 5)
        g.write(b"\x01")  # row 3: one byte of one box changed
    damage = reader(tmp_path).verify()
    assert [(d.row, d.key) for d in damage] == [(1, "b"), (3, "d")]
    assert "all zero" in damage[0].reason and "checksum mismatch" in damage[1].reason


def test_truncated_committed_data_is_an_error_naming_the_file(tmp_path):
    s = new_store(tmp_path)
    with s.writer() as w:
        w.append([("a", item(0, 2)), ("b", item(1, 2))])
    with open(tmp_path / "boxes.float32", "r+b") as f:
        f.truncate(20)
    with pytest.raises(StoreIntegrityError, match=r"boxes\.float32: holds 20 bytes but the 4 committed items"):
        reader(tmp_path).snapshot()
    with pytest.raises(StoreIntegrityError, match=r"boxes\.float32"):
        with s.writer():
            pass
    assert os.path.getsize(tmp_path / "boxes.float32") == 20  # not "repaired" by cutting committed rows


def test_a_ragged_column_is_a_declaration_and_shapes_are_checked(tmp_path):
    s = new_store(tmp_path, (Column("global", "float32", (3,)),))
    with s.writer() as w:
        w.append([("a", {"global": np.ones(3, np.float32)})])
        w.declare(Column("words", "int32", (), ragged=True))
        w.append([("b", {"global": np.ones(3, np.float32), "words": np.array([4, 7, 4], np.int32)})])
        with pytest.raises(StoreError, match="can only be declared before the first row"):
            w.declare(Column("codes", "uint8", (8,)))
        with pytest.raises(StoreError, match=r"a: column 'global' holds items of shape \(3,\), got \(4,\)"):
            w.stage([("a", {"global": np.ones(4, np.float32)})])
        with pytest.raises(StoreError, match="no column named nope"):
            w.stage([("a", {"global": np.ones(3, np.float32), "nope": np.ones(1)})])
        with pytest.raises(StoreError, match="no data for column 'global'"):
            w.stage([("a", {"words": np.ones(2, np.int32)})])
    snap = reader(tmp_path).snapshot()
    assert snap.get("words", 0).tolist() == [] and snap.get("words", 1).tolist() == [4, 7, 4]
    assert s.verify() == []
