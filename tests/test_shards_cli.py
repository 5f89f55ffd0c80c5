"""`instar index PHOTOS --out NAME.shards.json --shards N` writes N shards of one model, each image in the shard
that owns its name; the shards hold exactly the rows of one index, a search of the manifest equals a search of
that index, a re-run resumes, and bad --shards / --out combinations are refused with exit 2. Adding and removing
through a `ShardedIndex` go to the owning shard and keep every other image's id."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from instar import Index, ShardedIndex, list_images, open_index, search
from instar.cli import app
from instar.index.shards import shard_of

FAST = ["--preset", "rootsift-vlad", "--set", "pooling.k=8", "--set", "features.max_keypoints=300",
        "--set", "image.max_size=256"]


def run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def rows_by_name(index) -> dict:
    """name -> (content hash, size, global vector) of every live image."""
    vectors = index.snapshot().column("global")
    return {r.name: (r.sha256, r.width, r.height, np.asarray(vectors[r.row])) for r in index.records()}


def test_index_shards_equal_one_index_and_resume(tmp_path, photos):
    files = list_images(photos)
    manifest = tmp_path / "p.shards.json"
    code, out = run("index", photos, "--out", manifest, "--shards", 3, "-q", *FAST)
    assert code == 0, out
    assert "8 images (added 8" in out and "in 3 shards" in out, out
    spec = json.loads(manifest.read_text())
    assert spec["format"] == "instar-shards" and len(spec["shards"]) == 3
    code, out = run("index", photos, "--out", tmp_path / "single.index", "-q", *FAST)
    assert code == 0, out
    with Index.open(tmp_path / "single.index") as single, open_index(manifest) as sharded:
        assert isinstance(sharded, ShardedIndex)
        for i, shard in enumerate(sharded.shards):  # each image stored by the shard owning its name
            assert all(shard_of(r.name, 3) == i for r in shard.records())
        assert sum(len(s) for s in sharded.shards) == len(single) == len(files)
        mine, theirs = rows_by_name(sharded), rows_by_name(single)
        assert sorted(mine) == sorted(theirs)
        for name, (sha, w, h, vec) in theirs.items():
            assert mine[name][:3] == (sha, w, h) and np.allclose(mine[name][3], vec, atol=1e-6), name
        for q in files[:3]:
            a, b = search(sharded, q, k=8), search(single, q, k=8)
            assert [h.name for h in a] == [h.name for h in b], q
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    code, out = run("search", manifest, files[0], "-k", 2)
    assert code == 0 and files[0].name in out.splitlines()[0], out
    # a re-run resumes: nothing described again; with the same N or none
    code, out = run("index", photos, "--out", manifest, "--shards", 3)
    assert code == 0 and "unchanged 8" in out and "resuming" in out, out
    code, out = run("index", photos, "--out", manifest)
    assert code == 0 and "unchanged 8" in out, out
    code, out = run("remove", manifest, files[1].relative_to(photos).as_posix(), "nope.jpg")
    assert code == 2 and "nope.jpg: not in the sharded index" in out, out
    code, out = run("remove", manifest, files[1].relative_to(photos).as_posix())
    assert code == 0 and f"removed {files[1].relative_to(photos).as_posix()}" in out and "7 images" in out, out


def test_index_shards_bad_options_are_refused(tmp_path, photos):
    cases = [
        (["--out", tmp_path / "a.shards.json", "--shards", 0], "--shards 0: the number of shards must be from 1"),
        (["--out", tmp_path / "a.shards.json", "--shards", 5000], "--shards 5000"),
        (["--out", tmp_path / "a.index", "--shards", 2], "a.index: with --shards, --out names the shard manifest"),
        (["--out", tmp_path / "new.shards.json"], "give --shards N"),
    ]
    for args, message in cases:
        code, out = run("index", photos, *args, *FAST)
        assert code == 2 and message in out, (args, out)
        assert not (tmp_path / "a.shards").exists() and not (tmp_path / "a.index").exists()
    manifest = tmp_path / "b.shards.json"
    code, out = run("index", photos, "--out", manifest, "--shards", 2, "-q", *FAST)
    assert code == 0, out
    code, out = run("index", photos, "--out", manifest, "--shards", 3)
    assert code == 2 and "holds 2 shards, not --shards 3" in out, out
    (tmp_path / "folder.json").mkdir()
    code, out = run("index", photos, "--out", tmp_path / "folder.json", "--shards", 2)
    assert code == 2 and "is a folder, not a shard manifest" in out, out
    with open_index(manifest) as sharded:
        assert len(sharded) == 8  # nothing stored was lost


def test_sharded_add_and_remove_go_to_the_owning_shard_and_keep_ids(tmp_path, photos):
    files = list_images(photos)
    manifest = tmp_path / "p.shards.json"
    code, out = run("index", photos, "--out", manifest, "--shards", 2, "-q", *FAST)
    assert code == 0, out
    with open_index(manifest) as sharded:
        ids = {r.name: r.id for r in sharded.records()}
        # ids are stable (row in the shard * shards + shard), not the merged row numbers
        for rec in sharded.records():
            assert (rec.id % 2, rec.id // 2) == (shard_of(rec.name, 2), sharded.shards[rec.id % 2].live_record(rec.path).row)
            (back,) = sharded.records_by_id([rec.id])
            assert back.path == rec.path and back.row == rec.row
        extra = tmp_path / "extra"
        extra.mkdir()
        for i in range(4):  # new names: some land in shard 0, shifting the merged rows of shard 1
            (extra / f"new{i}.jpg").write_bytes(files[i].read_bytes())
        before = sharded.snapshot()
        assert sharded.snapshot() is before  # nothing committed: the merged view (and its columns) reused
        report = sharded.add(list_images(extra), root=tmp_path)
        assert sharded.snapshot() is not before and sharded.snapshot().n_live == 12
        assert report.added == 4 and not report.failed
        assert len(sharded) == 12
        assert {r.name: r.id for r in sharded.records() if r.name in ids} == ids
        for i, shard in enumerate(sharded.shards):
            assert all(shard_of(r.name, 2) == i for r in shard.records())
        hit = search(sharded, extra / "new0.jpg", k=2)
        assert {h.name for h in hit} == {"extra/new0.jpg", files[0].relative_to(photos).as_posix()}
        kept = sharded.snapshot()
        (gone,) = sharded.remove(["extra/new1.jpg"])
        assert sharded.snapshot() is not kept and sharded.snapshot().n_live == 11
        assert gone.name == "extra/new1.jpg" and len(sharded) == 11
        assert sharded.live_record(str((extra / "new1.jpg").resolve())) is None
        with pytest.raises(KeyError):
            sharded.records_by_id([10 ** 6])
        from instar.index import IndexError_
        with pytest.raises(IndexError_, match="not-there.jpg: not in the sharded index"):
            sharded.remove(["extra/new2.jpg", "not-there.jpg"])
        assert len(sharded) == 11  # nothing removed
        assert {r.name: r.id for r in sharded.records() if r.name in ids} == ids
