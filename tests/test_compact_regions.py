"""Compact regions (`coding.method = "pq"` / `"opq"`): region descriptors stored as product-quantisation codes and
scored by ADC in the regional filter and CA-SR (instar.extract.product_quantisation)."""
import subprocess
import sys

import numpy as np
import pytest

from instar.core.registry import CODINGS
from instar.presets import PresetError, load_preset


def unit_rows(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def correlated(n, d, seed):
    """(n, d) unit vectors with correlated, unequal dimensions (what OPQ's rotation is for)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((d, d)) * np.linspace(2.0, 0.1, d)[None, :]
    return unit_rows(rng.standard_normal((n, d)) @ mix.T)


@pytest.mark.parametrize("method", ["pq", pytest.param("opq", marks=pytest.mark.slow)])
def test_adc_scores_are_the_inner_products_with_the_decoded_regions(method):
    train, db, q = correlated(4000, 32, 0), correlated(300, 32, 1), correlated(1, 32, 2)[0]
    stage = CODINGS.build(method, m=8, **({"iterations": 5} if method == "opq" else {})).fit(train)
    codes = stage.codes(db)
    assert codes.shape == (300, 8) and codes.dtype == np.uint8
    adc = stage.scores(stage.table(q), codes)
    np.testing.assert_allclose(adc, stage.decode(codes) @ q, rtol=0, atol=1e-5)
    # the reconstruction is close to the float descriptors: ADC approximates the exact cosine
    assert np.abs(adc - db @ q).mean() < 0.1


@pytest.mark.slow  # several seconds: kept out of the 5-minute default run
def test_exhaustive_pq_gives_the_float_ranking():
    """m = D (one dimension per sub-quantiser, 256 levels each): ADC scores equal the float path's within each
    region's reconstruction error (Cauchy-Schwarz for a unit query), 5e-3 on average, and the best region is the same."""
    train, db = correlated(6000, 16, 0), correlated(200, 16, 1)
    stage = CODINGS.build("pq", m=16).fit(train)
    codes = stage.codes(db)
    residual = np.linalg.norm(stage.decode(codes) - db, axis=1)
    for seed in range(5):
        q = correlated(1, 16, 10 + seed)[0]
        adc, exact = stage.scores(stage.table(q), codes), db @ q
        assert np.all(np.abs(adc - exact) <= residual + 1e-5)
        assert np.abs(adc - exact).mean() < 5e-3
        assert int(np.argmax(adc)) == int(np.argmax(exact))
        top = np.argsort(-exact)[:10]
        assert len(set(top) & set(np.argsort(-adc)[:10])) >= 8


@pytest.mark.slow  # several seconds: kept out of the 5-minute default run
def test_opq_rotation_is_orthogonal_and_quantises_better_than_pq():
    train, db = correlated(4000, 32, 0), correlated(500, 32, 1)
    pq, opq = CODINGS.build("pq", m=4).fit(train), CODINGS.build("opq", m=4, iterations=5).fit(train)
    r = opq.rotation
    np.testing.assert_allclose(r @ r.T, np.eye(32), atol=1e-4)
    err = {name: float(((s.decode(s.codes(db)) - db) ** 2).sum(1).mean()) for name, s in (("pq", pq), ("opq", opq))}
    assert err["opq"] < err["pq"], err


def test_state_round_trip_gives_the_same_codes():
    train, db = correlated(2000, 32, 0), correlated(50, 32, 1)
    for method in ("pq", "opq"):
        extra = {"iterations": 3} if method == "opq" else {}
        stage = CODINGS.build(method, m=8, seed=3, **extra).fit(train)
        again = CODINGS.build(method, m=8, seed=3, **extra)
        again.load_state(stage.state())
        assert np.array_equal(again.codes(db), stage.codes(db))
        with pytest.raises(ValueError, match="stored centroids"):
            CODINGS.build(method, m=4, **extra).load_state(stage.state())


def test_bad_values_are_refused_with_the_allowed_range():
    with pytest.raises(ValueError, match=r"coding.m = 7: must divide the region descriptors' dimension 32"):
        CODINGS.build("pq", m=7).fit(correlated(1000, 32, 0))
    with pytest.raises(ValueError, match=r"2\^nbits = 256 centroids .* only 100"):
        CODINGS.build("pq", m=8).fit(correlated(100, 32, 0))
    for setting, expected in (({"coding.m": 0}, "coding.m = 0"), ({"coding.nbits": 9}, "<= 8"),
                              ({"coding.m": 5000}, "<= 4096")):
        with pytest.raises(PresetError, match=expected):
            load_preset("d2r-regional-lite0").with_overrides({"coding.method": "pq", **setting})
    # a stage that reads float region descriptors (not only their similarities) is refused on compact regions
    with pytest.raises(PresetError, match=r"rerank.method 'cs-sr' compares float region descriptors.*coding.method = 'pq'"):
        load_preset("faster-rcnn-ins-lite0").with_overrides({"coding.method": "pq", "rerank.method": "cs-sr"})
    # and a Hamming stage needs binary codes, which PQ codes are not
    with pytest.raises(PresetError, match="compares binary codes"):
        load_preset("d2r-regional-lite0").with_overrides({"coding.method": "pq", "filter.method": "hamming"})


SMALL = {"image.max_size": 256, "features.weights": "random:0", "coding.method": "pq", "coding.m": 64,
         "coding.nbits": 6}


@pytest.mark.slow  # several seconds: kept out of the 5-minute default run
def test_compact_index_builds_reopens_and_searches_by_adc(tmp_path, photos):
    """A d2r-regional-lite0 index with PQ regions: no float region column; every hit's score is the best ADC score
    of its stored codes against the query box, for the regional filter and for CA-SR, after reopening."""
    from instar import Index
    from instar.search.pipeline import Searcher

    images = sorted(photos.rglob("*.jpg"))
    preset = load_preset("d2r-regional-lite0").with_overrides(SMALL)
    with Index.create(tmp_path / "pq.index", preset, images) as index:
        index.add(images)
    with Index.open(tmp_path / "pq.index") as index:
        snap = index.snapshot()
        assert "regions" not in snap.columns and {"boxes", "region_pq"} <= set(snap.columns)
        assert snap.column("region_pq").dtype == np.uint8 and snap.column("region_pq").shape[1] == 64
        assert snap.spans("region_pq")[1].tolist() == snap.spans("boxes")[1].tolist()
        coding = index.extractor.coding
        for overrides in ({}, {"filter.method": "knn", "rerank.method": "ca-sr", "rerank.top": 5}):
            searcher = Searcher(index, overrides=overrides)
            query = searcher.query(photos / "coffee.jpg", (10, 10, 200, 150))
            ranking = searcher.rank(query, 5)
            q = query.box_descriptor
            assert len(ranking) == 5
            for pos, score, box in zip(ranking.positions, ranking.scores, ranking.boxes):
                row = int(searcher.db.rows[pos])
                decoded = coding.decode(snap.get("region_pq", row)) @ q
                assert score == pytest.approx(float(decoded.max()), abs=1e-4)
                np.testing.assert_allclose(box, snap.get("boxes", row)[int(decoded.argmax())], atol=1e-3)
        hits = searcher.hits(ranking)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.slow  # several seconds: kept out of the 5-minute default run
def test_cli_index_with_bad_m_exits_2_and_stores_nothing(tmp_path, photos):
    out = tmp_path / "x.index"
    p = subprocess.run([sys.executable, "-m", "instar", "index", str(photos), "--out", str(out), "--preset",
                        "d2r-regional-lite0", "--train", str(photos), "--set", "coding.method=pq",
                        "--set", "coding.m=7", "--set", "features.weights=random:0", "--set", "image.max_size=256"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "coding.m = 7: must divide the region descriptors' dimension 1280" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not out.exists()
