"""A sharded index (3 shards of one model, one manifest) searched as one gives the hits of one index holding all
rows, for global, ASMK and DRH presets; a shard with another model is refused; `instar merge` joins shards."""
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from instar import Index, ShardedIndex, list_images, open_index, search
from instar.cli import app
from instar.index.shards import create_shards, write_manifest
from instar.index import IndexError_
from instar.presets import load_preset

PRESETS = {
    "global": ("rootsift-vlad", {"pooling.k": "8", "features.max_keypoints": "300", "image.max_size": "256"}),
    "asmk": ("asmk-rootsift", {"pooling.k": "16", "features.max_keypoints": "300", "image.max_size": "256"}),
    "drh": ("drh-lite0", {"features.weights": "random:0", "image.max_size": "160"}),
}


def hits_of(index, queries):
    return [[(h.name, h.score, h.box) for h in search(index, q, k=6)] for q in queries]


@pytest.mark.parametrize("kind", sorted(PRESETS))
def test_three_shards_search_like_one_index(tmp_path, photos, kind):
    name, overrides = PRESETS[kind]
    preset = load_preset(name).with_overrides(overrides)
    files = list_images(photos)
    manifest = create_shards(tmp_path / "photos.shards.json", preset, files, 3)
    for i, shard in enumerate(manifest.shards):  # contiguous parts: one index would number the rows alike
        with Index.open(shard) as idx:
            idx.add(files[i * 3:(i + 1) * 3], root=photos)
    single_path = tmp_path / "single.index"
    shutil.copytree(manifest.shards[0], single_path)
    with Index.open(single_path) as single:
        single.add(files, root=photos)
        with open_index(manifest.path) as sharded:
            assert isinstance(sharded, ShardedIndex) and len(sharded) == len(single) == len(files)
            assert [r.name for r in sharded.records()] == [r.name for r in single.records()]
            got, want = hits_of(sharded, files[:4]), hits_of(single, files[:4])
    assert got == want


def test_a_shard_with_another_model_is_refused(tmp_path, photos, fast_preset):
    files = list_images(photos)
    manifest = create_shards(tmp_path / "p.shards.json", fast_preset, files, 2)
    other = Index.create(tmp_path / "other.index", fast_preset, files[:4])  # another codebook
    other.close()
    with pytest.raises(IndexError_, match="another fitted model"):
        write_manifest(tmp_path / "mixed.shards.json", [manifest.shards[0], tmp_path / "other.index"])
    shutil.rmtree(manifest.shards[1])
    shutil.copytree(tmp_path / "other.index", manifest.shards[1])
    with pytest.raises(IndexError_, match=r"001\.index: holds another fitted model"):
        open_index(manifest.path)
    r = CliRunner().invoke(app, ["search", str(manifest.path), str(files[0])])
    assert r.exit_code == 2 and "another fitted model" in r.output


def test_merge_joins_shards_into_one_index(tmp_path, photos, fast_preset):
    files = list_images(photos)
    manifest = create_shards(tmp_path / "p.shards.json", fast_preset, files, 2)
    for i, shard in enumerate(manifest.shards):
        with Index.open(shard) as idx:
            idx.add(files[i * 4:(i + 1) * 4], root=photos)
    r = CliRunner().invoke(app, ["merge", *map(str, manifest.shards), "--out", str(tmp_path / "merged.index")])
    assert r.exit_code == 0, r.output
    with Index.open(tmp_path / "merged.index") as merged, open_index(manifest.path) as sharded:
        assert [r.name for r in merged.records()] == [r.name for r in sharded.records()]
        assert np.array_equal(merged.vectors, sharded.vectors)
        assert hits_of(merged, files[:3]) == hits_of(sharded, files[:3])
    r = CliRunner().invoke(app, ["search", str(manifest.path), str(files[0]), "-k", "3"])
    assert r.exit_code == 0 and files[0].name in r.output, r.output
