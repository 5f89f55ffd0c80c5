"""Aggregated match kernels (ASMK, ASMK*, VLAD) and their regional variants against the papers' equations computed
directly, the inverted file against brute force, and add / remove through a real index."""
import numpy as np
import pytest

from instar.asmk import inverted_file
from instar.asmk.kernel import Aggregated, aggregate, kernel_value, region_members, selectivity, with_whole_image
from instar.core.binary import binary_similarity, pack_signs
from instar.core.groups import reduce_items
from instar.asmk.inverted_file import from_aggregated

C = np.array([[0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0]], np.float32)  # 3 visual words in 4-D


def words_of(x):
    return np.argmin(((x[:, None, :] - C[None]) ** 2).sum(-1), axis=1)


# hand-made descriptors: X uses words 0 and 1, Y words 0, 1 and 2; word 1's residuals point opposite ways
X = np.array([[0.5, 0.2, 0, 0], [0.1, 0.4, 0.3, 0], [4.2, 0.1, 0, 0.3]], np.float32)
Y = np.array([[0.4, 0.3, 0.1, 0], [3.7, -0.2, 0, -0.5], [0.2, 4.1, 0.2, 0], [0.3, 3.8, -0.1, 0.2]], np.float32)


def direct_V(x):
    """V(X_c) for every word c X uses: {c: sum of residuals}."""
    w = words_of(x)
    return {int(c): (x[w == c] - C[c]).sum(0).astype(np.float64) for c in np.unique(w)}


def sigma(u, alpha=3.0, tau=0.0):
    return np.sign(u) * abs(u) ** alpha if u > tau else 0.0


def test_asmk_kernel_is_equation_1_with_selectivity_2():
    VX, VY = direct_V(X), direct_V(Y)
    phi = lambda V: {c: v / np.linalg.norm(v) for c, v in V.items()}  # noqa: E731
    PX, PY = phi(VX), phi(VY)
    gamma = lambda P: sum(sigma(p @ p) for p in P.values()) ** -0.5  # noqa: E731
    expected = gamma(PX) * gamma(PY) * sum(sigma(PX[c] @ PY[c]) for c in PX if c in PY)
    # word 1's residuals disagree (negative inner product): selectivity with tau = 0 drops it
    assert PX[1] @ PY[1] < 0 and sigma(PX[1] @ PY[1]) == 0.0
    qx = aggregate(X, words_of(X), C, kernel="asmk", binary=False)
    qy = aggregate(Y, words_of(Y), C, kernel="asmk", binary=False)
    assert qx.gamma[0] == pytest.approx(1 / np.sqrt(2)) and qy.gamma[0] == pytest.approx(1 / np.sqrt(3))
    assert kernel_value(qx, qy)[0] == pytest.approx(expected, rel=1e-5)
    # self-similarity is 1 (gamma normalises eq. 1)
    assert kernel_value(qy, qy)[0] == pytest.approx(1.0, rel=1e-5)


def test_asmk_star_is_hamming_similarity_of_the_signs_and_vlad_is_the_cosine():
    VX, VY = direct_V(X), direct_V(Y)
    b = {c: np.where(v > 0, 1.0, -1.0) for c, v in VX.items()}
    by = {c: np.where(v > 0, 1.0, -1.0) for c, v in VY.items()}
    expected = (2 * 3) ** -0.5 * sum(sigma(b[c] @ by[c] / 4) for c in b if c in by)
    qx = aggregate(X, words_of(X), C, kernel="asmk", binary=True)
    qy = aggregate(Y, words_of(Y), C, kernel="asmk", binary=True)
    assert qx.data.dtype == np.uint8 and qx.data.shape == (2, 1)
    assert kernel_value(qx, qy)[0] == pytest.approx(expected, rel=1e-5)
    # 1 - 2h/D equals the normalised inner product of the +-1 vectors
    a, c = np.array([[1, -1, 1, 1, -1, -1, 1, -1]], float), np.array([[1, 1, 1, -1, -1, 1, 1, -1]], float)
    assert binary_similarity(pack_signs(a), pack_signs(c), 8)[0] == pytest.approx(float((a @ c.T)[0, 0]) / 8)
    # VLAD: sigma = identity, Phi = V: the cosine of the concatenated residual sums
    vx = np.concatenate([VX.get(c, np.zeros(4)) for c in range(3)])
    vy = np.concatenate([VY.get(c, np.zeros(4)) for c in range(3)])
    vl = kernel_value(aggregate(X, words_of(X), C, kernel="vlad", binary=False),
                      aggregate(Y, words_of(Y), C, kernel="vlad", binary=False), kernel="vlad")[0]
    assert vl == pytest.approx(vx @ vy / np.linalg.norm(vx) / np.linalg.norm(vy), rel=1e-5)
    assert selectivity(np.array([-0.5, 0.0, 0.5]), 3.0, 0.0).tolist() == [0.0, 0.0, 0.125]


# regions of Y: the whole image, a box around features 0-1, a box around features 2-3
POINTS = np.array([[10, 10], [30, 12], [80, 70], [90, 90]], np.float32)
BOXES = np.array([[0, 0, 50, 40], [60, 50, 100, 100]], np.float32)


def test_r_asmk_is_equation_9_and_r_vlad_equation_8():
    boxes = with_whole_image(BOXES, (100, 100))
    assert boxes.shape == (3, 4) and boxes[0].tolist() == [0, 0, 100, 100]
    members = region_members(POINTS, boxes)
    assert members.tolist() == [[True] * 4, [True, True, False, False], [False, False, True, True]]
    w = words_of(Y)
    R = 3
    # direct: V_R(Y_c) = 1/R sum_r gamma_VLAD(Y^r) V(Y^r_c), gamma_VLAD = 1/||V(Y^r)|| over all words (eq. 8)
    VR = {}
    for r in range(R):
        sub = Y[members[r]]
        V = direct_V(sub)
        g = 1 / np.sqrt(sum(v @ v for v in V.values()))
        for c, v in V.items():
            VR[c] = VR.get(c, 0) + g * v / R
    rvlad = aggregate(Y, w, C, kernel="vlad", binary=False, aggregation="regions", members=members)
    for c, v in zip(rvlad.words, rvlad.data):
        assert np.allclose(v, VR[int(c)], atol=1e-6)
    rasmk = aggregate(Y, w, C, kernel="asmk", binary=False, aggregation="regions", members=members)
    for c, v in zip(rasmk.words, rasmk.data):
        assert np.allclose(v, VR[int(c)] / np.linalg.norm(VR[int(c)]), atol=1e-6)
    # eq. 9 with eq. 1's normalisation, against the query X
    qx = aggregate(X, words_of(X), C, kernel="asmk", binary=False)
    PX = {c: v / np.linalg.norm(v) for c, v in direct_V(X).items()}
    hat = {c: v / np.linalg.norm(v) for c, v in VR.items()}
    expected = (2 * len(hat)) ** -0.5 * sum(sigma(PX[c] @ hat[c]) for c in PX if c in hat)
    assert kernel_value(qx, rasmk)[0] == pytest.approx(expected, rel=1e-5)
    # R-ASMK*: the binarised normalised regional residuals
    star = aggregate(Y, w, C, kernel="asmk", binary=True, aggregation="regions", members=members)
    assert star.data.tolist() == pack_signs(rasmk.data).tolist()
    # Naive-R-ASMK: 1/R sum_r gamma_ASMK(Y^r) V^(Y^r_c), left unnormalised
    naive = aggregate(Y, w, C, kernel="asmk", binary=False, aggregation="naive", members=members)
    NR = {}
    for r in range(R):
        V = direct_V(Y[members[r]])
        for c, v in V.items():
            NR[c] = NR.get(c, 0) + v / np.linalg.norm(v) / np.sqrt(len(V)) / R
    for c, v in zip(naive.words, naive.data):
        assert np.allclose(v, NR[int(c)], atol=1e-6)
    assert naive.gamma.tolist() == [1.0]


def test_regional_search_stores_every_region_and_pools_max_and_mean():
    members = region_members(POINTS, with_whole_image(BOXES, (100, 100)))
    sep = aggregate(Y, words_of(Y), C, kernel="asmk", binary=True, aggregation="separate", members=members)
    assert len(sep.gamma) == 3 and set(sep.items.tolist()) == {0, 1, 2}
    q = aggregate(X, words_of(X), C, kernel="asmk", binary=True)
    per_region = kernel_value(q, sep)
    for r in range(3):
        assert per_region[r] == pytest.approx(kernel_value(q, sep.item(r))[0])
    image, best = reduce_items(per_region, np.zeros(3, np.int64), 1, "max")
    assert image[0] == pytest.approx(per_region.max()) and best[0] == int(np.argmax(per_region))
    image, _ = reduce_items(per_region, np.zeros(3, np.int64), 1, "mean")
    assert image[0] == pytest.approx(per_region.mean())


@pytest.mark.parametrize("binary,aggregation,kernel", [(True, "image", "asmk"), (False, "image", "asmk"),
                                                       (True, "separate", "asmk"), (False, "regions", "vlad"),
                                                       (False, "naive", "asmk")])
def test_inverted_file_equals_brute_force(binary, aggregation, kernel):
    rng = np.random.default_rng(1)
    k, d = 32, 16
    centroids = rng.normal(size=(k, d)).astype(np.float32)
    images = []
    for i in range(25):
        x = (centroids[rng.integers(0, k, 40)] + 0.3 * rng.normal(size=(40, d))).astype(np.float32)
        pts = rng.uniform(0, 100, size=(40, 2)).astype(np.float32)
        boxes = with_whole_image(np.array([[0, 0, 60, 60], [40, 40, 100, 100]], np.float32), (100, 100))
        w = np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), 1)
        images.append(aggregate(x, w, centroids, kernel=kernel, binary=binary, aggregation=aggregation,
                                members=region_members(pts, boxes)))
    ivf = from_aggregated(images, k)
    qx = (centroids[rng.integers(0, k, 30)] + 0.3 * rng.normal(size=(30, d))).astype(np.float32)
    q = aggregate(qx, np.argmin(((qx[:, None] - centroids[None]) ** 2).sum(-1), 1), centroids, kernel=kernel,
                  binary=binary, aggregation="image")
    got = ivf.scores(q, kernel=kernel)
    want = np.concatenate([kernel_value(q, a, kernel=kernel) for a in images])
    assert np.allclose(got, want, atol=1e-5) and np.abs(want).max() > 0
    # the search touches only the query's words' posting lists
    seg = ivf.segments[0]
    assert int((seg.offsets[q.words + 1] - seg.offsets[q.words]).sum()) < len(seg.items)


def _fast(preset: str, **more):
    from instar.presets import load_preset
    sets = {"pooling.k": "16", "features.max_keypoints": "300", "image.max_size": "256", "train.max_images": "8"}
    sets.update(more)
    return load_preset(preset).with_overrides(sets)


def test_add_and_remove_through_a_real_index(tmp_path, photos):
    from instar import Index, list_images, search
    from instar.search import Database

    inverted_file.clear_cache()
    files = list_images(photos)
    index = Index.create(tmp_path / "a.index", _fast("asmk-rootsift", **{"pooling.binary": "true"}), train=files)
    first, rest = files[:5], files[5:]
    index.add(first, root=photos)
    q = str(photos / "coffee.jpg")
    hits = search(index, q, k=8)
    assert hits[0].name == "coffee.jpg" and len(hits) == 5
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)  # ASMK* of an image with itself
    index.add(rest, root=photos)
    db = Database.from_index(index)
    ivf = inverted_file.for_snapshot(db.snapshot, 16)
    assert ivf.n_rows == len(files) and len(ivf.segments) == 2  # the new rows were added as a segment
    hits = search(index, q, k=20)
    assert len(hits) == len(files)
    # the inverted file's scores are the kernel with each image's stored representation, computed directly
    snap = db.snapshot
    stage = index.extractor.pooling
    query_agg = stage.query_representation(index.extractor.features(index.extractor.load(q)))
    starts, counts = snap.spans("asmk_words", db.rows)
    for h in hits:
        pos = int(np.flatnonzero(db.rows == h.row)[0])
        s, c = starts[pos], counts[pos]
        stored = Aggregated(np.asarray(snap.column("asmk_words")[s:s + c]), np.zeros(c, np.int32),
                            np.asarray(snap.column("asmk_codes")[s:s + c]),
                            np.asarray(snap.get("asmk_gamma", h.row)), 128)
        assert h.score == pytest.approx(float(kernel_value(query_agg, stored)[0]), abs=1e-5)
    index.remove(["coffee.jpg"])
    hits = search(index, q, k=20)
    assert "coffee.jpg" not in [h.name for h in hits] and len(hits) == len(files) - 1
    index.add([photos / "coffee.jpg"], root=photos)  # unchanged file, but removed: a fresh row
    hits = search(index, q, k=20)
    assert hits[0].name == "coffee.jpg" and len(hits) == len(files)
    index.close()


def test_search_stages_state_what_the_index_must_store():
    from instar.presets import PresetError, load_preset
    from instar.presets.rules import fitting_entries
    with pytest.raises(PresetError, match="filter.method 'asmk' searches aggregated local features"):
        load_preset("rootsift-vlad").with_overrides({"filter.method": "asmk"})
    with pytest.raises(PresetError, match="pooling.points = true"):
        load_preset("asmk-star-lite0").with_overrides({"rerank.method": "sp"})
    assert fitting_entries(load_preset("rootsift-vlad").sections, "rerank") == ["none"]
    assert "asmk" not in fitting_entries(load_preset("rootsift-vlad").sections, "filter")
    assert set(fitting_entries(load_preset("d2r-r-asmk-star-lite0-sp").sections, "rerank")) == {"none", "sp"}
    assert {"knn", "asmk"} <= set(fitting_entries(load_preset("asmk-star-lite0").sections, "filter"))
    from instar.extract.extractor import Extractor
    with pytest.raises(ValueError, match="Naive-R-ASMK"):  # refused when the stage is built (index creation)
        Extractor(load_preset("asmk-rootsift").with_overrides({"pooling.aggregation": "naive", "pooling.binary": "true"}))
