"""Metrics: revisitop trapezoidal AP, compute_map, Easy/Medium/Hard, mP@k quirk, UKBench N-S score.

Every expected value below is worked out by hand in the comments.
"""
import math

import numpy as np
import pytest

from instar.evaluation.metrics import (
    average_precision,
    compute_map,
    ns_hits,
    ns_score,
    positive_positions,
    revisited_protocols,
)


# ---------------------------------------------------------------------------- average_precision


def test_ap_single_positive_first():
    # j=0, r=0: p0 = 1, p1 = 1/1 = 1 -> (1+1)/2/1 = 1
    assert average_precision(np.array([0]), 1) == 1.0


def test_ap_single_positive_at_rank_2():
    # j=0, r=2: p0 = 0/2 = 0, p1 = 1/3 -> (0 + 1/3)/2/1 = 1/6
    assert average_precision(np.array([2]), 1) == pytest.approx(1 / 6, abs=1e-15)


def test_ap_positives_at_1_and_3_of_3():
    # n=3.  j=0, r=1: p0 = 0/1 = 0,   p1 = 1/2  -> (0 + 1/2)/2/3   = 1/12
    #       j=1, r=3: p0 = 1/3,       p1 = 2/4  -> (1/3 + 1/2)/2/3 = 5/36
    # third positive never retrieved: adds nothing.  AP = 3/36 + 5/36 = 2/9
    assert average_precision(np.array([1, 3]), 3) == pytest.approx(2 / 9, abs=1e-15)


def test_ap_with_and_without_junk():
    # ranking: [P, J, P, N, N] with P = 10, 12 (positives), J = 11 (junk)
    row = np.array([10, 11, 12, 13, 14])
    ok, junk = np.array([10, 12]), np.array([11])
    # junk removed: the positives sit at 0 and 1 -> both trapezoids have p0 = p1 = 1 -> AP = 1
    pos = positive_positions(row, ok, junk)
    assert pos.tolist() == [0, 1]
    assert average_precision(pos, 2) == 1.0
    # junk counted as a negative: positives at 0 and 2
    #   j=0, r=0: (1 + 1)/2/2 = 1/2 ; j=1, r=2: p0 = 1/2, p1 = 2/3 -> (1/2 + 2/3)/2/2 = 7/24
    #   AP = 12/24 + 7/24 = 19/24
    pos = positive_positions(row, ok, None)
    assert pos.tolist() == [0, 2]
    assert average_precision(pos, 2) == pytest.approx(19 / 24, abs=1e-15)


def test_ap_nothing_retrieved_and_bad_input():
    assert average_precision(np.array([], dtype=int), 4) == 0.0
    with pytest.raises(ValueError):
        average_precision(np.array([0]), 0)
    with pytest.raises(ValueError):
        average_precision(np.array([0, 1]), 1)


def test_positive_positions_several_junk():
    # ranking: J P J J P N P   (J = 1, 3, 4 ; P = 0, 2, 6)
    row = np.array([1, 0, 3, 4, 2, 9, 6])
    # raw positions of P: 1, 4, 6; junk before them: 1, 3, 3 -> 0, 1, 3
    assert positive_positions(row, [0, 2, 6], [1, 3, 4]).tolist() == [0, 1, 3]


# ---------------------------------------------------------------------------- compute_map


def test_compute_map_mpk_quirk():
    # One positive at 1-based position 1: P@1 = 1; for k = 5 the quirk takes
    # kq = min(max(pos), 5) = 1, so P@5 = 1/1 = 1 (not 1/5).
    # One positive at 1-based position 3: P@1: kq = min(3, 1) = 1, none <= 1 -> 0;
    #   P@5: kq = min(3, 5) = 3 -> 1/3 ; P@10 likewise 1/3.
    ranks = np.array([[7, 1, 2, 3, 4, 5, 6, 0], [0, 1, 7, 3, 4, 5, 6, 2]])
    gnd = [{"ok": [7], "junk": []}, {"ok": [7], "junk": []}]
    m, aps, mpr, prs = compute_map(ranks, gnd, (1, 5, 10))
    assert prs[0].tolist() == [1.0, 1.0, 1.0]
    assert prs[1] == pytest.approx([0.0, 1 / 3, 1 / 3])
    # APs: 1 and (0/2 + 1/3)/2 = 1/6 -> mAP = 7/12
    assert aps == pytest.approx([1.0, 1 / 6])
    assert m == pytest.approx(7 / 12)
    assert mpr == pytest.approx([0.5, 2 / 3, 2 / 3])


def test_compute_map_query_without_positives_is_nan_and_excluded():
    ranks = np.array([[0, 1, 2], [2, 1, 0]])
    gnd = [{"ok": [0], "junk": []}, {"ok": [], "junk": [1]}]
    m, aps, mpr, prs = compute_map(ranks, gnd, (1, 5))
    assert aps[0] == 1.0 and math.isnan(aps[1])
    assert np.isnan(prs[1]).all()
    assert m == 1.0 and mpr.tolist() == [1.0, 1.0]
    # all queries empty -> mAP NaN
    m, aps, mpr, _ = compute_map(ranks, [{"ok": []}, {"ok": []}])
    assert math.isnan(m) and np.isnan(mpr).all()


def test_compute_map_truncated_ranking():
    # top-2 ranking of a 5-image database; positives 3 (retrieved at 1) and 4 (not retrieved)
    # AP = j=0, r=1: (0 + 1/2)/2/2 = 1/8
    m, aps, _, prs = compute_map(np.array([[0, 3]]), [{"ok": [3, 4]}], (1, 5))
    assert m == pytest.approx(1 / 8)
    # query whose positives are all outside the truncated list: AP 0, P@k 0
    m, aps, _, prs = compute_map(np.array([[0, 1]]), [{"ok": [4]}], (1, 5))
    assert m == 0.0 and prs.tolist() == [[0.0, 0.0]]


def test_compute_map_shape_errors():
    with pytest.raises(ValueError, match="rows"):
        compute_map(np.zeros((3, 4), dtype=int), [{"ok": [0]}])
    with pytest.raises(ValueError, match="2-D"):
        compute_map(np.zeros(4, dtype=int), [{"ok": [0]}])


def _reference_map(ranks_nq, gnd, kappas):
    """A deliberately plain re-statement of the revisitop definitions, on revisitop's (N, Q) layout."""
    n, nq = ranks_nq.shape
    aps, prs, used = [], [], 0
    for i in range(nq):
        ok = set(int(x) for x in gnd[i]["ok"])
        junk = set(int(x) for x in gnd[i]["junk"])
        if not ok:
            aps.append(float("nan"))
            prs.append([float("nan")] * len(kappas))
            continue
        used += 1
        pos, seen_junk = [], 0
        for r in range(n):
            img = int(ranks_nq[r, i])
            if img in ok:
                pos.append(r - seen_junk)
            elif img in junk:
                seen_junk += 1
        ap = 0.0
        for j, r in enumerate(pos):
            p0 = 1.0 if r == 0 else j / r
            p1 = (j + 1) / (r + 1)
            ap += (p0 + p1) * (1.0 / len(ok)) / 2.0
        aps.append(ap)
        one = [p + 1 for p in pos]
        row = []
        for k in kappas:
            kq = min(max(one), k)
            row.append(sum(1 for p in one if p <= kq) / kq)
        prs.append(row)
    aps = np.array(aps)
    prs = np.array(prs)
    return np.nanmean(aps), aps, np.nanmean(prs, axis=0), prs


def test_compute_map_matches_plain_definition_on_random_data():
    rng = np.random.default_rng(0)
    n, nq = 60, 9
    ranks = np.stack([rng.permutation(n) for _ in range(nq)])  # (Q, N)
    gnd = []
    for q in range(nq):
        perm = rng.permutation(n)
        n_ok = 0 if q == 4 else int(rng.integers(1, 12))
        gnd.append({"ok": perm[:n_ok], "junk": perm[n_ok : n_ok + int(rng.integers(0, 8))]})
    m, aps, mpr, prs = compute_map(ranks, gnd, (1, 5, 10))
    rm, raps, rmpr, rprs = _reference_map(ranks.T, gnd, (1, 5, 10))  # reference takes (N, Q)
    assert m == pytest.approx(rm, abs=1e-12)
    np.testing.assert_allclose(aps, raps, atol=1e-12)
    np.testing.assert_allclose(mpr, rmpr, atol=1e-12)
    np.testing.assert_allclose(prs, rprs, atol=1e-12)
    assert np.isnan(aps[4])


# ---------------------------------------------------------------------------- revisited protocols


def test_revisited_protocols_toy():
    # Database 0..7.
    # Query A: easy [0, 1], hard [2], junk [3];  ranking 3 0 5 2 1 4 6 7
    # Query B: easy [4], no hard, no junk;        ranking 5 4 0 1 2 3 6 7
    gnd = [
        {"easy": [0, 1], "hard": [2], "junk": [3], "bbx": [0, 0, 1, 1]},
        {"easy": [4], "hard": [], "junk": [], "bbx": [0, 0, 1, 1]},
    ]
    ranks = np.array([[3, 0, 5, 2, 1, 4, 6, 7], [5, 4, 0, 1, 2, 3, 6, 7]])
    res = revisited_protocols(ranks, gnd)

    # EASY  (ok = easy, junk = junk + hard)
    # A: ok {0,1}, junk {3,2}. Raw positions: 0 at 1, 1 at 4; junk at 0 and 3.
    #    Junk removed: 0 -> 1-1 = 0, 1 -> 4-2 = 2.  AP = (1+1)/2/2 + (1/2 + 2/3)/2/2 = 1/2 + 7/24 = 19/24
    #    1-based [1, 3]: P@1 = 1 (kq=1); P@5: kq = min(3,5) = 3 -> 2/3; P@10 = 2/3
    # B: ok {4}, at position 1.  AP = (0/1 + 1/2)/2/1 = 1/4
    #    1-based [2]: P@1: kq=1 -> 0; P@5: kq = 2 -> 1/2; P@10 = 1/2
    e = res["easy"]
    assert e["aps"] == pytest.approx([19 / 24, 1 / 4])
    assert e["map"] == pytest.approx((19 / 24 + 1 / 4) / 2)  # 25/48
    assert e["mp@1"] == pytest.approx(0.5)
    assert e["mp@5"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # 7/12
    assert e["mp@10"] == pytest.approx(7 / 12)

    # MEDIUM  (ok = easy + hard, junk = junk)
    # A: ok {0,1,2}, junk {3}. Raw: 0 at 1, 2 at 3, 1 at 4; junk at 0 -> [0, 2, 3]
    #    AP = (1+1)/2/3 + (1/2 + 2/3)/2/3 + (2/3 + 3/4)/2/3 = 24/72 + 14/72 + 17/72 = 55/72
    #    1-based [1, 3, 4]: P@1 = 1; P@5: kq = 4 -> 3/4; P@10 = 3/4
    # B: as in Easy: AP 1/4, P@1 0, P@5 1/2, P@10 1/2
    m = res["medium"]
    assert m["aps"] == pytest.approx([55 / 72, 1 / 4])
    assert m["map"] == pytest.approx((55 / 72 + 1 / 4) / 2)  # 73/144
    assert m["mp@1"] == pytest.approx(0.5)
    assert m["mp@5"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # 5/8
    assert m["mp@10"] == pytest.approx(5 / 8)

    # HARD  (ok = hard, junk = junk + easy)
    # A: ok {2}, junk {3,0,1}. Raw: 2 at 3; junk at 0, 1 (and 4, after it) -> position 1
    #    AP = (0 + 1/2)/2 = 1/4 ; 1-based [2]: P@1 0, P@5 1/2, P@10 1/2
    # B: no hard positive -> NaN, dropped from the Hard means
    h = res["hard"]
    assert h["aps"][0] == pytest.approx(1 / 4) and math.isnan(h["aps"][1])
    assert h["map"] == pytest.approx(1 / 4)
    assert h["mp@1"] == 0.0
    assert h["mp@5"] == pytest.approx(0.5)
    assert h["mp@10"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------- N-S score


def test_ns_score_toy():
    # groups of four: images 0-3 -> group 0, 4-7 -> group 1
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ranks = np.array(
        [
            [0, 1, 4, 2, 3, 5, 6, 7],  # query image 0: top 4 groups 0 0 1 0 -> 3
            [5, 4, 6, 7, 0, 1, 2, 3],  # query image 5: 1 1 1 1 -> 4
            [4, 5, 3, 6, 0, 1, 2, 7],  # query image 3: 1 1 0 1 -> 1
        ]
    )
    q = np.array([0, 5, 3])
    assert ns_hits(ranks, groups, q).tolist() == [3, 4, 1]
    # (3 + 4 + 1) / 3 = 8/3
    assert ns_score(ranks, groups, q) == pytest.approx(8 / 3)


def test_ns_score_needs_four_results():
    with pytest.raises(ValueError, match="at least 4"):
        ns_score(np.array([[0, 1, 2]]), np.array([0, 0, 0, 0]), np.array([0]))
