import numpy as np
import pytest

from instar.extract.regions import box_to_cells, rmac_regions


def test_square_map_levels():
    r = rmac_regions(12, 12, levels=3)
    sides = sorted({int(x1 - x0) for x0, _, x1, _ in r})
    # level 1: side 12 (1 region), level 2: side 8 (2x2), level 3: side 6 (3x3)
    assert sides == [6, 8, 12]
    assert len(r) == 1 + 4 + 9


def test_landscape_map_has_extra_columns_with_about_40_percent_overlap():
    h, w = 30, 40
    r = rmac_regions(h, w, levels=3)
    level1 = r[(r[:, 2] - r[:, 0]) == 30]
    # 30-wide windows over 40 cells: 2 windows overlap 1 - 10/30 = 67%, 3 overlap 83%; 2 is nearest to 40%
    assert len(level1) == 2
    assert level1[:, 0].min() == 0 and level1[:, 2].max() == w
    r2 = rmac_regions(20, 60, levels=1)
    # 20-wide windows over 60 cells, e+1 of them: overlap 1 - (40/e)/20 is -1, 0, 1/3, 1/2 for e = 1..4; 1/3 is nearest 40%
    starts = sorted(r2[:, 0].tolist())
    assert len(starts) == 4 and starts[0] == 0 and r2[:, 2].max() == 60


def test_regions_inside_map_and_non_empty():
    for h, w in [(1, 1), (2, 7), (7, 3), (32, 24), (64, 48)]:
        r = rmac_regions(h, w, levels=3)
        assert (r[:, 0] >= 0).all() and (r[:, 1] >= 0).all()
        assert (r[:, 2] <= w).all() and (r[:, 3] <= h).all()
        assert (r[:, 2] > r[:, 0]).all() and (r[:, 3] > r[:, 1]).all()
        assert len({tuple(x) for x in r.tolist()}) == len(r)


def test_empty_map_rejected():
    with pytest.raises(ValueError, match="empty"):
        rmac_regions(0, 5)


def test_box_to_cells():
    # a 320x160 image on a 20x10 map: 16 px per cell
    assert box_to_cells((16, 0, 48, 33), (320, 160), (10, 20)).tolist() == [1, 0, 3, 3]
    # tiny box still covers one cell
    assert box_to_cells((0, 0, 1, 1), (320, 160), (10, 20)).tolist() == [0, 0, 1, 1]
