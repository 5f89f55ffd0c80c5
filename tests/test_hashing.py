"""Binary codes (instar.coding), Hamming search (instar.hamming) and the DRH search stages (instar.drh)."""
import numpy as np
import pytest
import torch

from instar.core import binary as hamming
from instar.store.columns import CODES, REGION_CODES
from instar.extract.coding import DRHHashing, ITQ, LSH, PCASign, drh_objective
from instar.core.binary import pack, unpack
from instar.search.expansion.drh import GlobalRegionHashingQE, LocalRegionHashingQE, RegionHashingQE
from instar.search.filter.hamming import GlobalRegionHashingSearch
from instar.search.rerank.ldrh import LocalRegionHashing
from instar.presets import PresetError, load_preset
from instar.search import Database, Query, Ranking, RegionTable, SearchPipeline


def brute_hamming(a, b):
    return (unpack(a)[:, None, :] != unpack(b)[None, :, :]).sum(axis=2)


# ------------------------------------------------------------------------------------------ DRH objective


def eq4(w, b, x, alpha, beta, eta):
    """The paper's eq. (4) for one region feature x (D,), written out as printed (with sigma'(Wx + b))."""
    z = w @ x + b
    h = torch.sigmoid(z)
    y = (h >= 0.5).to(h.dtype)
    delta = (h - y - alpha * h) * h * (1 - h)
    return torch.outer(delta, x) + beta * w, delta + eta * b


def autograd_loss(w, b, x, alpha, beta, eta, objective, balance, gamma, rho=0.0):
    """Eq. (1)-(3) as printed (data terms averaged over the batch), or the balanced variant, for autograd."""
    n, L = x.shape[0], w.shape[0]
    h = torch.sigmoid(x @ w.T + b)
    y = (h >= 0.5).to(h.dtype).detach()  # the code is a step: no gradient
    loss = 0.5 * ((y - h) ** 2).sum() / n + 0.5 * beta * (w ** 2).sum() + 0.5 * eta * (b ** 2).sum()
    if objective == "paper":
        return loss - 0.5 * alpha * torch.trace(h @ h.T) / n
    hc = h - h.mean(dim=0)
    c = hc.T @ hc / n
    off = c - torch.diag(torch.diagonal(c))
    return (loss - 0.5 * alpha * torch.trace(hc.T @ hc) / n + 0.5 * balance * ((h.mean(dim=0) - 0.5) ** 2).sum()
            + 0.25 * gamma * (off ** 2).sum() / L + 0.25 * rho * ((w @ w.T - torch.eye(L, dtype=w.dtype)) ** 2).sum())


@pytest.mark.parametrize("objective,balance,gamma,rho,bits", [("paper", 0, 0, 0, 10), ("balanced", 0, 0, 0, 10),
                                                              ("balanced", 20, 30, 0, 10), ("balanced", 20, 30, 2, 10),
                                                              ("balanced", 20, 30, 2, 16)])
def test_drh_gradients_match_autograd(objective, balance, gamma, rho, bits):
    # bits = 16 > 12 dimensions: the orthogonality term goes through the D x D Gram matrix
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 12, generator=g, dtype=torch.float64)
    w = 0.4 * torch.randn(bits, 12, generator=g, dtype=torch.float64)
    b = 0.2 * torch.randn(bits, generator=g, dtype=torch.float64)
    loss, gw, gb = drh_objective(w, b, x, alpha=100.0, beta=0.001, eta=0.001, objective=objective, balance=balance,
                                 decorrelation=gamma, orthogonality=rho)
    wa, ba = w.clone().requires_grad_(), b.clone().requires_grad_()
    ref = autograd_loss(wa, ba, x, 100.0, 0.001, 0.001, objective, balance, gamma, rho)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert torch.allclose(gw, wa.grad, atol=1e-10) and torch.allclose(gb, ba.grad, atol=1e-10)


def test_drh_gradients_are_eq4_for_one_region():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 9, generator=g, dtype=torch.float64)
    w = 0.5 * torch.randn(7, 9, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(7, generator=g, dtype=torch.float64)
    _, gw, gb = drh_objective(w, b, x, alpha=100.0, beta=0.001, eta=0.001, objective="paper")
    ew, eb = eq4(w, b, x[0], 100.0, 0.001, 0.001)
    assert torch.allclose(gw, ew, atol=1e-12) and torch.allclose(gb, eb, atol=1e-12)
    # and eq. (4) is the derivative of eq. (1)-(3): a finite difference on one weight
    eps, (i, j) = 1e-6, (3, 4)
    wp, wm = w.clone(), w.clone()
    wp[i, j] += eps
    wm[i, j] -= eps
    lp = drh_objective(wp, b, x, alpha=100.0, beta=0.001, eta=0.001)[0]
    lm = drh_objective(wm, b, x, alpha=100.0, beta=0.001, eta=0.001)[0]
    assert float((lp - lm) / (2 * eps)) == pytest.approx(float(gw[i, j]), rel=1e-5)


def clustered(n=600, d=16, seed=0):
    """Non-negative L2-normalised vectors around 6 centres (like RoI max-pooled features)."""
    rng = np.random.default_rng(seed)
    centres = rng.random((6, d)) ** 3
    x = centres[rng.integers(0, 6, n)] + 0.05 * rng.random((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_paper_objective_collapses_and_the_balanced_one_does_not():
    x = clustered()
    paper = DRHHashing(bits=32, objective="paper", epochs=5, batch=64).fit(x, np.random.default_rng(0))
    ones = unpack(paper.codes(x)).mean(axis=0)
    assert np.all(ones == 1.0)  # every bit constant: alpha/2 tr(h h^T) drives every sigmoid to 1
    assert paper.history[-1]["constant_bits"] == 1.0
    balanced = DRHHashing(bits=32, objective="balanced", epochs=5, batch=64).fit(x, np.random.default_rng(0))
    ones = unpack(balanced.codes(x)).mean(axis=0)
    assert np.mean((ones == 0) | (ones == 1)) < 0.2 and 0.3 < ones.mean() < 0.7
    assert len(np.unique(balanced.codes(x), axis=0)) >= 6  # the clusters get different codes


def test_orthogonality_keeps_the_hash_directions_apart():
    """Without ||W W^T - I||^2 the variance term pulls every bit towards the same high-variance directions."""
    x = clustered()

    def mean_cosine(rho):
        c = DRHHashing(bits=32, objective="balanced", epochs=5, batch=64, orthogonality=rho).fit(x, np.random.default_rng(0))
        w = c.weights / np.linalg.norm(c.weights, axis=0)
        return np.abs(w.T @ w - np.eye(32)).sum() / (32 * 31)

    assert mean_cosine(1.0) < 0.3 < 0.4 < mean_cosine(0.0)


# ------------------------------------------------------------------------------------------ codes


def test_pack_unpack_round_trip_and_codes_are_the_thresholded_projection():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (5, 24)).astype(np.uint8)
    packed = pack(bits)
    assert packed.shape == (5, 3) and packed.dtype == np.uint8
    assert np.array_equal(unpack(packed), bits)
    assert np.array_equal(unpack(packed, 20), bits[:, :20])
    with pytest.raises(ValueError, match="multiple of 8"):
        pack(bits[:, :20])
    x = clustered(200)
    coding = LSH(bits=64).fit(x)
    assert np.array_equal(unpack(coding.codes(x)), (x @ coding.weights + coding.bias >= 0).astype(np.uint8))
    assert np.array_equal(coding.codes(x[3]), coding.codes(x[3:4]))
    with pytest.raises(ValueError, match="codes 16-dimensional vectors"):
        coding.codes(np.zeros(15, np.float32))


def test_baselines_learn_and_round_trip_their_state():
    x = clustered(800)
    for cls in (PCASign, ITQ, LSH, DRHHashing):
        kw = {"epochs": 3} if cls is DRHHashing else {}
        a = cls(bits=16, **kw).fit(x, np.random.default_rng(0))
        b = cls(bits=16, **kw)
        b.load_state(a.state())
        assert b.fitted and np.array_equal(a.codes(x), b.codes(x)), cls.__name__
    # ITQ's rotation lowers the quantisation loss ||B - V R||^2 of plain PCA-sign (what it is fitted for)
    pca, itq = PCASign(bits=8).fit(x), ITQ(bits=8).fit(x)
    v = x @ pca.weights + pca.bias
    vr = x @ itq.weights + itq.bias
    assert ((np.sign(vr) - vr) ** 2).sum() < ((np.sign(v) - v) ** 2).sum()
    # PCA needs as many dimensions as bits
    with pytest.raises(ValueError, match="16 dimensions"):
        PCASign(bits=32).fit(x)
    with pytest.raises(ValueError, match="multiple of 8"):
        DRHHashing(bits=100)


# ------------------------------------------------------------------------------------------ Hamming search


@pytest.mark.parametrize("nbytes", [8, 5])
def test_hamming_knn_equals_brute_force(nbytes):
    rng = np.random.default_rng(nbytes)
    # few distinct codes: many equal distances, which must come out ordered by position
    base = rng.integers(0, 256, (40, nbytes), dtype=np.uint8)
    db = base[rng.integers(0, 40, 500)]
    q = rng.integers(0, 256, (7, nbytes), dtype=np.uint8)
    d, pos = hamming.knn(db, q, 60)
    brute = brute_hamming(q, db)
    for i in range(len(q)):
        ref = np.lexsort((np.arange(len(db)), brute[i]))[:60]
        assert pos[i].tolist() == ref.tolist() and d[i].tolist() == brute[i][ref].tolist()
    assert np.array_equal(hamming.distances(db[:30], q), brute_hamming(db[:30], q))
    assert np.array_equal(hamming.distances(db[:30], q[:1]), brute_hamming(db[:30], q[:1]))
    assert hamming.knn(db[:5], q, 60)[0].shape == (7, 5)
    with pytest.raises(ValueError, match="bits"):
        hamming.knn(db, q[:, :-1], 3)


def coded_db(codes, region_codes=None, counts=None, boxes=None):
    """A hand-made Database whose codes are primed in its cache (as `instar.drh` reads them from an index)."""
    n = len(codes)
    db = Database(np.arange(n, dtype=np.int64), np.zeros((n, 4), np.float32))
    db.cached(CODES, lambda: codes)
    if region_codes is not None:
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        db.cached(REGION_CODES, lambda: (starts, np.asarray(counts, np.int64), region_codes))
        db.regions = RegionTable(starts, np.asarray(counts, np.int64), boxes, np.zeros((len(boxes), 4), np.float32))
    return db


def coded_query(code):
    q = Query(vector=np.ones(4, np.float32))
    q.cached(CODES, lambda: np.asarray(code, np.uint8))
    return q


def byte_codes(*values):
    return np.array([[v] for v in values], dtype=np.uint8)


def test_gdrh_filter_ranks_by_hamming_similarity():
    db = coded_db(byte_codes(0b11110000, 0b11111111, 0b00000000, 0b11110001))
    r = GlobalRegionHashingSearch()(db, coded_query([0b11110000]), 4)
    assert r.positions.tolist() == [0, 3, 1, 2]
    assert r.scores.tolist() == [1.0, 0.75, 0.0, 0.0]  # 1 - 2 d / 8


def ldrh_db():
    """3 images; image 2's second region has the query's code; image 0's first region is 1 bit away."""
    regions = byte_codes(0b10101011, 0b01010101,               # image 0: 2 regions
                         0b00001111,                           # image 1: 1 region
                         0b11110000, 0b10101010, 0b00000000)   # image 2: 3 regions
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 8, 8], [0, 0, 30, 30], [3, 4, 13, 24], [1, 1, 2, 2]],
                     np.float32)
    globals_ = byte_codes(0b10101010, 0b10101110, 0b01010101)
    return coded_db(globals_, regions, [2, 1, 3], boxes), coded_query([0b10101010])


def test_ldrh_reranks_the_top_m_by_the_nearest_region_code_and_localises():
    db, q = ldrh_db()
    first = GlobalRegionHashingSearch()(db, q, 3)
    assert first.positions.tolist() == [0, 1, 2]
    r = LocalRegionHashing(top=3)(db, q, first)
    # min region distances: image 0 -> 1, image 1 -> 4, image 2 -> 0
    assert r.positions.tolist() == [2, 0, 1]
    assert r.scores.tolist() == [1.0, 0.75, 0.0]
    assert r.boxes.tolist() == [[3, 4, 13, 24], [0, 0, 10, 10], [0, 0, 8, 8]]
    # only the top M are re-ranked; the rest keep the filter's order and get no box
    r = LocalRegionHashing(top=2)(db, q, first)
    assert r.positions.tolist() == [0, 1, 2] and np.isnan(r.boxes[2]).all()
    assert LocalRegionHashing().localise(db, q, np.array([2, 1])).tolist() == [[3, 4, 13, 24], [0, 0, 8, 8]]


def test_gqe_scores_each_candidate_by_its_best_match_among_the_top_q_global_codes():
    codes = byte_codes(0b00000000, 0b00000011, 0b11111100, 0b00001111, 0b11111111)
    db = coded_db(codes)
    first = Ranking(np.array([0, 1, 3, 2, 4]), np.zeros(5, np.float32))
    r = GlobalRegionHashingQE(q=2, top=5).before_rerank(db, None, first)
    # distances to {image 0, image 1}: 0:0, 1:0, 3:min(4,2)=2, 2:min(6,8)=6, 4:min(8,6)=6 (tie: 2 before 4)
    assert r.positions.tolist() == [0, 1, 3, 2, 4]
    r = GlobalRegionHashingQE(q=1, top=3).before_rerank(db, None, Ranking(np.array([4, 0, 2, 1, 3]), np.zeros(5, np.float32)))
    # top 3 = images 4, 0, 2 scored against image 4 alone: 0, 8, 2 -> 4, 2, 0; images 1, 3 stay behind
    assert r.positions.tolist() == [4, 2, 0, 1, 3]
    assert GlobalRegionHashingQE()(db, None, r, 5) is r  # nothing after the re-ranker


def test_lqe_expands_with_the_best_region_codes_of_the_top_q():
    db, q = ldrh_db()
    ranked = LocalRegionHashing(top=3)(db, q, Ranking(np.array([0, 1, 2]), np.zeros(3, np.float32)))
    assert ranked.positions.tolist() == [2, 0, 1]
    # q = 2: expansion codes = image 2's 0b10101010 and image 0's 0b10101011; image 1's region 0b00001111 is
    # 4 and 3 bits from them, image 0's regions 1 and 0, image 2's 0
    r = LocalRegionHashingQE(q=2, top=3)(db, q, ranked, 3)
    assert r.positions.tolist() == [2, 0, 1] and r.scores.tolist() == [1.0, 1.0, 0.25]
    assert r.boxes.tolist() == ranked.boxes.tolist()  # each hit keeps the box of its region nearest the query
    # q = 1 with image 1 first: its only region 0b00001111 is the expansion code; image 0's 0b10101011 is 3 bits
    # from it, image 2's nearest (0b10101010, 0b00000000) 4
    r = LocalRegionHashingQE(q=1, top=3)(db, q, Ranking(np.array([1, 2, 0]), np.zeros(3, np.float32)), 3)
    assert r.positions.tolist() == [1, 0, 2] and r.scores.tolist() == [1.0, 0.25, 0.0]


def test_pipeline_runs_gqe_before_ldrh_and_lqe_after():
    db, q = ldrh_db()
    preset = load_preset("drh-lite0").with_overrides({"rerank.top": "3", "expansion.top": "3", "expansion.q_global": "1",
                                                      "expansion.q_local": "1"})
    pipe = SearchPipeline(preset)
    assert isinstance(pipe.filter, GlobalRegionHashingSearch) and isinstance(pipe.expansion, RegionHashingQE)
    r = pipe(db, q, 3)
    # by hand: gDRH [0, 1, 2] -> gQE(q=1, image 0's code) [0, 1, 2] -> lDRH [2, 0, 1] -> lQE(q=1: image 2's region
    # 0b10101010) distances 2:0, 0:1, 1:4 -> [2, 0, 1]
    assert r.positions.tolist() == [2, 0, 1] and r.boxes[0].tolist() == [3, 4, 13, 24]
    # gQE alone runs before lDRH: its q = 1 code is the filter's first (image 0), which keeps [0, 1, 2], and lDRH
    # then gives [2, 0, 1]; after lDRH its code would be image 2's (0b01010101), giving [2, 1, 0]
    r = SearchPipeline(preset.with_overrides({"expansion.method": "gqe", "expansion.q": "1"}))(db, q, 3)
    assert r.positions.tolist() == [2, 0, 1] and r.boxes[0].tolist() == [3, 4, 13, 24]


def test_hamming_stages_need_codes_and_codings_need_regions():
    with pytest.raises(PresetError, match="filter.method 'hamming' compares binary codes: set coding.method"):
        load_preset("mac-lite0").with_overrides({"filter.method": "hamming"})
    with pytest.raises(PresetError, match="coding.method 'drh' is learned on, and codes, region descriptors"):
        load_preset("mac-lite0").with_overrides({"coding.method": "drh"})
    with pytest.raises(PresetError, match="objective = 'other' is not one of paper, balanced"):
        load_preset("drh-lite0").with_overrides({"coding.objective": "other"})
    plain = Database(np.arange(2), np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="stores none"):
        GlobalRegionHashingSearch()(plain, coded_query([1]), 2)
    with pytest.raises(ValueError, match="coding stage"):
        GlobalRegionHashingSearch()(coded_db(byte_codes(1, 2)), Query(vector=np.ones(4, np.float32)), 2)


# ------------------------------------------------------------------------------------------ end to end


def test_drh_lite0_end_to_end_index_search_eval(tmp_path, photos):
    """drh-lite0 (scaled down, random trunk) through `instar index`, `eval` and `search --json`: hits carry region boxes."""
    import json
    import shutil

    from typer.testing import CliRunner

    from instar import Index
    from instar.cli import app

    small = ["--set", "image.max_size=128", "--set", "features.scales=1", "--set", "features.weights=random:0",
             "--set", "coding.bits=64", "--set", "coding.epochs=5"]
    runner = CliRunner()
    train = tmp_path / "train"
    train.mkdir()
    for name in ("astronaut", "rocket", "retina"):
        shutil.copy(photos / ("sub" if name == "retina" else "") / f"{name}.jpg", train)
    out = tmp_path / "drh.index"
    r = runner.invoke(app, ["index", str(train), "--out", str(out), "--preset", "drh-lite0", "--train", str(train), "-q",
                            *small])
    assert r.exit_code == 0, r.output
    with Index.open(out) as index:
        snap = index.snapshot()
        # the preset keeps region codes and boxes only: no float region descriptors (coding.keep_float_regions)
        assert {"codes", "region_codes", "boxes"} <= set(snap.columns) and "regions" not in snap.columns
        assert snap.column("codes").shape == (3, 8) and snap.column("codes").dtype == np.uint8
        counts = snap.spans("region_codes")[1]
        assert counts.tolist() == snap.spans("boxes")[1].tolist() and counts.min() >= 2  # one code per region
        assert index.extractor.coding.fitted and index.meta("trained_on") == str(train)
    # a folder benchmark: two cropped queries whose own photos are the positives, with their boxes
    data = tmp_path / "bench"
    shutil.copytree(photos, data / "images")
    queries = [{"name": n, "image": f"images/{n}.jpg", "box": [8, 8, 120, 100], "positives": [f"{n}.jpg"],
                "boxes": {f"{n}.jpg": [8, 8, 120, 100]}} for n in ("coffee", "chelsea")]
    (data / "queries.json").write_text(json.dumps({"database": "images", "queries": queries}))
    work = tmp_path / "work"
    r = runner.invoke(app, ["eval", "folder", "--data", str(data), "--preset", "drh-lite0", "--train", str(train),
                            "--workdir", str(work), "--json", str(tmp_path / "m.json"), "-q", *small])
    assert r.exit_code == 0, r.output
    assert "filter hamming, rerank ldrh(top=400), expansion gqe+lqe(q_global=6, q_local=6, top=400)" in r.output
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert 0 <= metrics["all"]["map"] <= 1 and metrics["localisation"]["hits"] >= 1
    # search the evaluation's index: every hit's box is one of that image's stored regions (original pixels)
    (evaluated,) = work.glob("*.drh-lite0.index")
    r = runner.invoke(app, ["search", str(evaluated), str(data / "images" / "coffee.jpg"), "--box", "8,8,120,100",
                            "-k", "4", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 4 and all(-1 <= hit["score"] <= 1 for hit in hits)
    with Index.open(evaluated) as index:
        snap = index.snapshot()
        for hit in hits:
            assert any(np.allclose(hit["box"], b, atol=1e-3) for b in snap.get("boxes", hit["row"]))
    # a float region stage cannot run on codes alone: a clear refusal naming the setting, exit code 2
    r = runner.invoke(app, ["search", str(evaluated), str(data / "images" / "coffee.jpg"), "--box", "8,8,120,100",
                            "--set", "rerank.method=ca-sr"])
    assert r.exit_code == 2 and "keep_float_regions" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("preset", ["gdrh-lite0", "maxconv-lite0"])
def test_gdrh_and_maxconv_presets_index_and_search(tmp_path, photos, preset):
    """The other two presets through `instar index` and `search --json`: gDRH stores codes and ranks by Hamming (an
    image's own photo is its first hit, at similarity 1); maxconv stores float regions and no codes."""
    import json
    import shutil

    from typer.testing import CliRunner

    from instar import Index
    from instar.cli import app

    small = ["--set", "image.max_size=128", "--set", "features.scales=1", "--set", "features.weights=random:0"]
    if preset == "gdrh-lite0":
        small += ["--set", "coding.bits=64", "--set", "coding.epochs=5"]
    folder = tmp_path / "db"
    shutil.copytree(photos, folder)
    out = tmp_path / "x.index"
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(folder), "--out", str(out), "--preset", preset, "--train", str(photos), "-q",
                            *small])
    assert r.exit_code == 0, r.output
    with Index.open(out) as index:
        columns = set(index.snapshot().columns)
    # gDRH stores codes and no float regions; maxconv stores float regions and no codes
    assert ({"codes", "region_codes"} <= columns) == (preset == "gdrh-lite0") == ("regions" not in columns)
    r = runner.invoke(app, ["search", str(out), str(folder / "coffee.jpg"), "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and hits[0]["path"].endswith("coffee.jpg") and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
