"""The search stages on hand-made databases: filter, re-rank (CA-SR), regional search and query expansion."""
import numpy as np
import pytest

from instar.search.expansion.qe import AlphaQE, AverageQE
from instar.search.filter.knn import GlobalKNN
from instar.search.filter.regional import RegionalSearch
from instar.presets import load_preset
from instar.search.rerank.ca_sr import CASR
from instar.search import Database, Query, RegionTable, SearchPipeline


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def random_db():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(50, 16)))
    return Database(np.arange(50, dtype=np.int64), x), x, rng


def test_knn_filter_is_exact(random_db):
    db, x, rng = random_db
    q = unit(x[3] + 0.1)
    r = GlobalKNN()(db, Query(vector=q), 5)
    assert r.positions.tolist() == np.argsort(-(x @ q))[:5].tolist()
    assert np.allclose(r.scores, np.sort(x @ q)[::-1][:5], atol=1e-5)


def test_query_expansion_math(random_db):
    db, x, rng = random_db
    q = unit(x[:1] + 0.1)[0]
    first = GlobalKNN()(db, Query(vector=q), 10)
    top3 = x[first.positions[:3]]
    r = AverageQE(top=3)(db, Query(vector=q), first, 5)
    assert r.positions.tolist() == np.argsort(-(x @ unit(q + top3.sum(0))))[:5].tolist()
    r = AlphaQE(top=3, alpha=3.0)(db, Query(vector=q), first, 5)
    w = np.maximum(top3 @ q, 0) ** 3
    assert r.positions.tolist() == np.argsort(-(x @ unit(q + (w[:, None] * top3).sum(0))))[:5].tolist()


def _region_db():
    """4 images; image 2's second region matches the query box exactly, image 0's first region half-way."""
    qbox = unit([1, 0, 0, 0])
    descs = unit([[0.5, 0.5, 0, 0], [0, 1, 0, 0],            # image 0: 2 regions
                  [0, 0, 1, 0],                               # image 1: 1 region
                  [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0],   # image 2: 3 regions
                  [0, 0, 1, 1]])                              # image 3: 1 region
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 8, 8], [0, 0, 30, 30], [3, 4, 13, 24], [1, 1, 2, 2],
                      [0, 0, 9, 9]], np.float32)
    table = RegionTable(np.array([0, 2, 3, 6]), np.array([2, 1, 3, 1]), boxes, descs)
    vectors = unit(np.eye(4)[[0, 1, 2, 3]] + 0.01)
    return Database(np.arange(4, dtype=np.int64), vectors, table), qbox


def test_ca_sr_reorders_the_top_n_by_best_region_and_localises():
    db, qbox = _region_db()
    query = Query(vector=db.vectors[1])
    query.__dict__["box_descriptor"] = qbox
    first = GlobalKNN()(db, query, 4)
    assert first.positions[0] == 1
    r = CASR(top=3)(db, query, first)
    head = first.positions[:3]
    # images within the top 3 re-ordered by their best region; the 4th stays last
    best = {0: 0.5 ** 0.5, 1: 0.0, 2: 1.0, 3: 0.0}
    assert r.positions[:3].tolist() == sorted(head.tolist(), key=lambda p: -best[p])
    assert r.positions[3] == first.positions[3]
    i2 = r.positions.tolist().index(2)
    assert r.boxes[i2].tolist() == [3, 4, 13, 24] and r.scores[i2] == pytest.approx(1.0)
    assert np.isnan(r.boxes[3]).all()
    assert CASR().localise(db, query, np.array([2, 0])).tolist() == [[3, 4, 13, 24], [0, 0, 10, 10]]


def test_regional_search_max_and_mean():
    db, qbox = _region_db()
    query = Query(vector=db.vectors[0])
    query.__dict__["box_descriptor"] = qbox
    r = RegionalSearch(pooling="max")(db, query, 4)
    assert r.positions[:2].tolist() == [2, 0] and r.boxes[0].tolist() == [3, 4, 13, 24]
    r = RegionalSearch(pooling="mean")(db, query, 4)
    means = {0: 0.5 ** 0.5 / 2, 1: 0.0, 2: 1 / 3, 3: 0.0}
    assert r.positions[:2].tolist() == [0, 2] and r.scores[0] == pytest.approx(means[0], abs=1e-6)
    assert r.boxes is None


def test_pipeline_composes_the_preset_stages_and_boxes_after_expansion():
    db, qbox = _region_db()
    preset = load_preset("gem").with_overrides({"region_pooling.method": "max", "rerank.method": "ca-sr",
                                                 "rerank.top": "4", "expansion.method": "aqe", "expansion.top": "1"})
    pipe = SearchPipeline(preset)
    assert [type(s).__name__ for s in (pipe.filter, pipe.rerank, pipe.expansion)] == ["GlobalKNN", "CASR", "AverageQE"]
    query = Query(vector=db.vectors[1])
    query.__dict__["box_descriptor"] = qbox
    r = pipe(db, query, 3)
    assert len(r) == 3 and r.boxes is not None
    # after expansion every hit is localised by its best region
    for pos, box in zip(r.positions, r.boxes):
        assert box.tolist() == CASR().localise(db, query, np.array([pos]))[0].tolist()


def test_region_stages_need_stored_regions():
    from instar.presets import PresetError
    with pytest.raises(PresetError, match="rerank.method 'ca-sr' compares regions: set region_pooling.method"):
        load_preset("gem").with_overrides({"rerank.method": "ca-sr"})
    db = Database(np.arange(2), unit(np.eye(2)))
    with pytest.raises(ValueError, match="stores none"):
        RegionalSearch()(db, Query(vector=db.vectors[0]), 2)
