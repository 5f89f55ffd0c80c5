import json
import shutil

import numpy as np
import pytest
from PIL import Image

from instar import evaluate
from instar.evaluation.datasets import load_dataset


@pytest.fixture
def folder_dataset(tmp_path, photos):
    """A generic folder benchmark: database = the 8 photos plus a flipped copy of two; queries are boxes."""
    root = tmp_path / "bench"
    shutil.copytree(photos, root / "images")
    Image.open(photos / "coffee.jpg").transpose(Image.FLIP_LEFT_RIGHT).save(root / "images" / "coffee_flip.jpg")
    (root / "queries").mkdir()
    shutil.copy(photos / "coffee.jpg", root / "queries" / "coffee_q.jpg")
    shutil.copy(photos / "chelsea.jpg", root / "queries" / "chelsea_q.jpg")
    w, h = Image.open(photos / "chelsea.jpg").size
    spec = {"database": "images", "queries": [
        {"name": "coffee", "image": "queries/coffee_q.jpg", "box": None, "positives": ["coffee.jpg"], "junk": ["coffee_flip.jpg"]},
        {"name": "chelsea", "image": "queries/chelsea_q.jpg", "box": [0, 0, w, h], "positives": ["chelsea.jpg"], "junk": []},
    ]}
    (root / "queries.json").write_text(json.dumps(spec))
    return root


def test_evaluate_folder_benchmark(folder_dataset, fast_preset, tmp_path):
    res = evaluate("folder", fast_preset, data=folder_dataset, train=folder_dataset / "images", workdir=tmp_path / "work")
    # each query is an exact copy of its positive: it must come first
    assert res.report.metrics["all"]["map"] == pytest.approx(1.0)
    assert res.report.metrics["all"]["mp@1"] == pytest.approx(1.0)
    assert res.ranks.shape == (2, 9)
    ds = load_dataset("folder", data=folder_dataset)
    names = [p.name for p in ds.database]
    assert names[res.ranks[0, 0]] == "coffee.jpg" and names[res.ranks[1, 0]] == "chelsea.jpg"
    assert "mAP" in res.table() or "map" in res.table().lower()
    # the kept index is reused on a second run (same preset), giving the same ranking
    again = evaluate("folder", fast_preset, data=folder_dataset, train=folder_dataset / "images", workdir=tmp_path / "work")
    assert np.array_equal(again.ranks, res.ranks) and again.seconds["fit"] < res.seconds["fit"]


def test_unreadable_database_image_is_reported_not_hidden(folder_dataset, fast_preset):
    (folder_dataset / "images" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    res = evaluate("folder", fast_preset, data=folder_dataset, train=folder_dataset / "images" / "sub")
    assert res.ranks.shape == (2, 9)
    assert "1 of 10 database images could not be read" in res.table() and "zz_broken.jpg" in res.table()


def test_training_on_the_evaluated_database_is_stated(folder_dataset, fast_preset):
    res = evaluate("folder", fast_preset, data=folder_dataset)
    assert "evaluated database itself" in res.table()


def test_revisited_ground_truth_without_images_names_the_missing_file(shared_data, fast_preset, tmp_path):
    with pytest.raises(FileNotFoundError, match="all_souls_000013|missing"):
        evaluate("roxford5k", fast_preset, gnd=shared_data / "revisitop-gnd" / "gnd_roxford5k.pkl", images=tmp_path)


def test_sharded_evaluation_gives_the_metrics_of_one_index(folder_dataset, fast_preset, tmp_path):
    from typer.testing import CliRunner

    from instar.cli import app
    one = evaluate("folder", fast_preset, data=folder_dataset, train=folder_dataset / "images", workdir=tmp_path / "one")
    three = evaluate("folder", fast_preset, data=folder_dataset, train=folder_dataset / "images",
                     workdir=tmp_path / "three", shards=3)
    assert three.index_path.endswith("bench.rootsift-vlad.3.shards.json")
    assert np.array_equal(three.ranks, one.ranks) and three.report.metrics == one.report.metrics
    fast = ["--set", "pooling.k=8", "--set", "features.max_keypoints=300", "--set", "image.max_size=256"]
    base = ["eval", "folder", "--data", str(folder_dataset), "--train", str(folder_dataset / "images"),
            "--preset", "rootsift-vlad", *fast, "-q"]
    r = CliRunner().invoke(app, [*base, "--workdir", str(tmp_path / "three"), "--shards", "3",
                                 "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m.json").read_text())["metrics"] == json.loads(json.dumps(one.report.metrics, default=float))
    r = CliRunner().invoke(app, [*base, "--shards", "0"])
    assert r.exit_code == 2 and "--shards 0: the number of shards must be from 1" in r.output, r.output
