"""Dataset loaders and their evaluation protocols, on synthetic layouts and on the real shared data."""
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instar.evaluation.datasets import (
    KNOWN_DATASETS,
    Dataset,
    DatasetError,
    MissingImagesError,
    Query,
    Report,
    load_classic,
    load_dataset,
    load_folder,
    load_holidays,
    load_revisited,
    load_ukbench,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def shared_data() -> Path:
    # The benchmark data lives beside the repository (../shared/data); its absence is a broken
    # checkout, not a reason to skip.
    assert SHARED_DATA.is_dir(), f"shared benchmark data not found at {SHARED_DATA} (expected ../shared/data beside the repo)"
    return SHARED_DATA


def _jpg(path: Path, color=(120, 60, 30), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def _perfect_medium(ds: Dataset) -> np.ndarray:
    n = len(ds.database)
    rows = []
    for g in ds.ground_truth:
        ok = [int(i) for i in g["easy"]] + [int(i) for i in g["hard"]]
        s = set(ok)
        rows.append(ok + [i for i in range(n) if i not in s])
    return np.array(rows)


# ---------------------------------------------------------------------------- real data


def test_real_mini_rparis6k(shared_data):
    ds = load_dataset("mini-rparis6k", data=shared_data / "mini-rparis6k")
    assert ds.kind == "revisited" and ds.name == "mini-rparis6k"
    assert len(ds.database) == 238 and len(ds.queries) == 12
    assert all(p.is_file() for p in ds.database)
    assert all(q.image.is_file() and q.box is not None and q.db_index is None for q in ds.queries)
    with open(shared_data / "mini-rparis6k" / "gnd_mini-rparis6k.pkl", "rb") as f:
        cfg = pickle.load(f)
    assert [p.stem for p in ds.database] == list(cfg["imlist"])
    assert ds.queries[0].name == cfg["qimlist"][0]
    assert ds.queries[0].box == tuple(float(v) for v in cfg["gnd"][0]["bbx"])

    # Easy + hard positives first: every protocol is perfect (junk/ignored images are removed).
    rep = ds.evaluate(_perfect_medium(ds))
    for proto in ("easy", "medium", "hard"):
        # (the trapezoid sum can land one ulp above 1, exactly as in revisitop)
        assert rep.metrics[proto] == pytest.approx({"map": 1.0, "mp@1": 1.0, "mp@5": 1.0, "mp@10": 1.0}, abs=1e-12)
    # one query has no hard positive: it is absent from the Hard per-query results
    no_hard = [q.name for q, g in zip(ds.queries, cfg["gnd"]) if len(g["hard"]) == 0]
    assert len(no_hard) == 1
    assert len(rep.per_query["medium"]) == 12 and len(rep.per_query["hard"]) == 11
    assert no_hard[0] not in rep.per_query["hard"]
    table = rep.table()
    assert "Medium" in table and "100.00" in table and "mP@10" in table

    # A reversed ranking scores far lower, and the means agree with the per-query values.
    rep2 = ds.evaluate(_perfect_medium(ds)[:, ::-1].copy())
    assert rep2.metrics["medium"]["map"] < 0.5
    assert rep2.metrics["hard"]["map"] == pytest.approx(np.mean(list(rep2.per_query["hard"].values())))


def test_real_smvs_dvd_covers_names_images_in_sub_folders(shared_data, tmp_path):
    ds = load_dataset("smvs-dvd-covers", data=shared_data / "smvs-dvd-covers")
    assert len(ds.database) == 100 and len(ds.queries) == 400
    assert ds.database[0] == shared_data / "smvs-dvd-covers" / "jpg" / "Reference" / "001.jpg"
    assert {q.image.parent.name for q in ds.queries} == {"Canon", "Droid", "E63", "Palm"}
    # each phone photo's one positive is its own cover's scan
    q = ds.queries[0]
    assert [ds.database[i].stem for i in ds.ground_truth[0]["easy"]] == [q.image.stem]
    # no query has a hard positive: the Hard protocol is undefined and left out, not reported as NaN
    rep = ds.evaluate(np.tile(np.arange(100), (400, 1)))
    assert set(rep.metrics) == {"easy", "medium"} and "Hard" not in rep.table() and "nan" not in rep.table()
    # a missing sub-folder is reported with the first missing file in it
    import shutil
    shutil.copytree(shared_data / "smvs-dvd-covers" / "jpg" / "Reference", tmp_path / "jpg" / "Reference")
    with pytest.raises(MissingImagesError, match=r"400 of the 500 images .* first missing: .*(Canon|Droid|E63|Palm)/\d{3}\.jpg"):
        load_revisited(shared_data / "smvs-dvd-covers" / "gnd_smvs-dvd-covers.pkl", tmp_path / "jpg")


def test_smvs_held_out_split_is_covers_051_to_100(shared_data):
    ds = load_dataset("smvs-dvd-covers-test", data=shared_data / "smvs-dvd-covers")
    assert len(ds.database) == 50 and len(ds.queries) == 200
    assert {p.stem for p in ds.database} == {f"{i:03d}" for i in range(51, 101)}
    assert all(p.parent.name == "Reference" for p in ds.database)
    for q, g in zip(ds.queries, ds.ground_truth):
        assert [ds.database[i].stem for i in g["ok"]] == [q.image.stem] and q.box is None


def test_smvs_instance_direction_has_cover_boxes(shared_data):
    ds = load_dataset("smvs-dvd-covers-ins-test", data=shared_data / "smvs-dvd-covers")
    assert len(ds.queries) == 50 and len(ds.database) == 200
    assert all(q.image.parent.name == "Reference" and q.box is None for q in ds.queries)
    for q, g, boxes in zip(ds.queries, ds.ground_truth, ds.positive_boxes):
        # the four phone photos of the same cover, each with the cover's box inside the photo
        assert sorted(ds.database[i].parent.name for i in g["ok"]) == ["Canon", "Droid", "E63", "Palm"]
        assert {ds.database[i].stem for i in g["ok"]} == {q.image.stem} and set(boxes) == set(g["ok"].tolist())
        for i, (x0, y0, x1, y1) in boxes.items():
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 640
    full = load_dataset("smvs-dvd-covers-ins", data=shared_data / "smvs-dvd-covers")
    assert len(full.queries) == 100 and len(full.database) == 400


def test_real_roxford5k_gnd_without_images(shared_data, tmp_path):
    gnd = shared_data / "revisitop-gnd" / "gnd_roxford5k.pkl"
    with pytest.raises(MissingImagesError) as e:
        load_dataset("roxford5k", gnd=gnd, images=tmp_path / "no-such-folder")
    msg = str(e.value)
    assert "no-such-folder" in msg and "not found" in msg and "4993" in msg
    # an existing but empty folder: all 4993 + 70 images are missing, the first is named
    with pytest.raises(MissingImagesError) as e:
        load_revisited(gnd, tmp_path)
    msg = str(e.value)
    assert "5063 of the 5063" in msg and "first missing" in msg and ".jpg" in msg
    # data folder given without a jpg/ folder inside
    with pytest.raises(MissingImagesError, match="jpg"):
        load_dataset("roxford5k", data=shared_data / "revisitop-gnd")
    # unknown name, with no gnd_<name>.pkl there
    with pytest.raises(DatasetError, match="known: roxford5k"):
        load_dataset("roxford", data=shared_data / "revisitop-gnd")


def test_real_ukbench_dups(shared_data):
    ds = load_dataset("ukbench", images=shared_data / "ukbench-dups" / "base_images")
    assert len(ds.database) == 10 and len(ds.queries) == 10
    assert all(q.db_index == i for i, q in enumerate(ds.queries))
    # names with a suffix (_hflip ...) are not UKBench names
    with pytest.raises(DatasetError, match="ukbench00120_hflip"):
        load_ukbench(shared_data / "ukbench-dups" / "mixed_images")


# ---------------------------------------------------------------------------- revisited (synthetic)


def _revisited_fixture(tmp_path: Path, missing: tuple[str, ...] = ()) -> tuple[Path, Path]:
    imlist = [f"db{i}" for i in range(6)]
    qimlist = ["qa", "qb"]
    gnd = [
        {"bbx": [1, 2, 5, 6], "easy": [0, 1], "hard": [2], "junk": [3]},
        {"bbx": [0.5, 0, 7.5, 5], "easy": [4], "hard": [], "junk": []},
    ]
    gnd_path = tmp_path / "gnd_toy.pkl"
    with open(gnd_path, "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    for n in imlist + qimlist:
        if n not in missing:
            _jpg(tmp_path / "jpg" / f"{n}.jpg")
    return gnd_path, tmp_path / "jpg"


def test_revisited_synthetic_and_evaluate(tmp_path):
    gnd_path, jpg = _revisited_fixture(tmp_path)
    ds = load_dataset("toy", data=tmp_path)
    assert ds.kind == "revisited" and ds.name == "toy"
    assert [p.name for p in ds.database] == [f"db{i}.jpg" for i in range(6)]
    assert ds.queries[1] == Query("qb", jpg / "qb.jpg", (0.5, 0.0, 7.5, 5.0), None)
    # ranking A: 3 0 5 2 1 4 -> Easy: ok {0,1}, junk {3,2}: positions 0, 2 -> AP 19/24 (see test_metrics)
    # ranking B: 5 4 0 1 2 3 -> Easy: ok {4} at 1 -> AP 1/4 ; no hard positive -> absent from Hard
    rep = ds.evaluate(np.array([[3, 0, 5, 2, 1, 4], [5, 4, 0, 1, 2, 3]]))
    assert rep.metrics["easy"]["map"] == pytest.approx((19 / 24 + 1 / 4) / 2)
    assert rep.per_query["easy"] == pytest.approx({"qa": 19 / 24, "qb": 1 / 4})
    assert rep.per_query["hard"] == pytest.approx({"qa": 1 / 4})
    # gnd and images given separately
    ds2 = load_dataset("roxford5k", gnd=gnd_path, images=jpg)
    assert ds2.name == "roxford5k" and len(ds2.database) == 6


def test_revisited_missing_images_named(tmp_path):
    _revisited_fixture(tmp_path, missing=("db2", "qb"))
    with pytest.raises(MissingImagesError) as e:
        load_dataset("toy", data=tmp_path)
    msg = str(e.value)
    assert "2 of the 8" in msg and "db2.jpg" in msg


def test_revisited_bad_pickle(tmp_path):
    p = tmp_path / "gnd_x.pkl"
    p.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="gnd_x.pkl"):
        load_revisited(p, tmp_path)
    with open(p, "wb") as f:
        pickle.dump({"imlist": []}, f)
    with pytest.raises(DatasetError, match="qimlist"):
        load_revisited(p, tmp_path)


def test_evaluate_rejects_bad_ranks(tmp_path):
    _revisited_fixture(tmp_path)
    ds = load_dataset("toy", data=tmp_path)
    with pytest.raises(DatasetError, match="shape"):
        ds.evaluate(np.zeros((3, 6), dtype=int))
    with pytest.raises(DatasetError, match="outside"):
        ds.evaluate(np.array([[0, 1, 2, 3, 4, 6], [0, 1, 2, 3, 4, 5]]))
    with pytest.raises(DatasetError, match="twice"):
        ds.evaluate(np.array([[0, 0, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]))
    with pytest.raises(DatasetError, match="integer"):
        ds.evaluate(np.zeros((2, 6)))


# ---------------------------------------------------------------------------- classic


def _classic_fixture(tmp_path: Path) -> Path:
    data = tmp_path / "oxford5k"
    # nested like the Paris archives; sorted by stem: a_1 a_2 a_3 b_1 b_2 c_1
    for rel in ("jpg/x/b_1.jpg", "jpg/a_3.jpg", "jpg/y/a_1.jpg", "jpg/a_2.jpg", "jpg/x/c_1.jpg", "jpg/y/z/b_2.jpg"):
        _jpg(data / rel)
    gt = data / "gt_files"
    gt.mkdir(parents=True)
    (gt / "alpha_1_query.txt").write_text("oxc1_a_1 1.5 2 6.5 5\n")
    (gt / "alpha_1_good.txt").write_text("a_1\na_2\n")
    (gt / "alpha_1_ok.txt").write_text("a_3\n")
    (gt / "alpha_1_junk.txt").write_text("c_1\n")
    (gt / "beta_1_query.txt").write_text("b_1 0 0 4 4\n")
    (gt / "beta_1_good.txt").write_text("b_2\n")
    (gt / "beta_1_ok.txt").write_text("")
    (gt / "beta_1_junk.txt").write_text("")
    return data


def test_classic(tmp_path):
    data = _classic_fixture(tmp_path)
    ds = load_dataset("oxford5k", data=data)
    assert ds.kind == "classic"
    assert [p.stem for p in ds.database] == ["a_1", "a_2", "a_3", "b_1", "b_2", "c_1"]
    qa, qb = ds.queries
    assert qa.name == "alpha_1" and qa.image.name == "a_1.jpg" and qa.db_index == 0  # oxc1_ stripped
    assert qa.box == (1.5, 2.0, 6.5, 5.0) and qb.db_index == 3
    assert ds.ground_truth[0]["ok"].tolist() == [0, 1, 2] and ds.ground_truth[0]["junk"].tolist() == [5]
    # alpha_1: ranking a_1 c_1 b_1 a_2 a_3 b_2 = 0 5 3 1 2 4; junk c_1 removed -> positives at 0, 2, 3
    #   AP = (1+1)/2/3 + (1/2 + 2/3)/2/3 + (2/3 + 3/4)/2/3 = 55/72 ; 1-based [1,3,4]: P@1 1, P@5 3/4
    # beta_1: ranking b_1 b_2 ... = 3 4 0 1 2 5 -> positive b_2 at 1: AP 1/4, P@1 0, P@5 1/2
    rep = ds.evaluate(np.array([[0, 5, 3, 1, 2, 4], [3, 4, 0, 1, 2, 5]]))
    assert rep.per_query["all"] == pytest.approx({"alpha_1": 55 / 72, "beta_1": 1 / 4})
    assert rep.metrics["all"]["map"] == pytest.approx((55 / 72 + 1 / 4) / 2)
    assert rep.metrics["all"]["mp@1"] == pytest.approx(0.5)
    assert rep.metrics["all"]["mp@5"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert "All" in rep.table()


def test_classic_missing_image(tmp_path):
    data = _classic_fixture(tmp_path)
    (data / "jpg" / "a_3.jpg").unlink()
    (data / "jpg" / "x" / "c_1.jpg").unlink()
    with pytest.raises(MissingImagesError) as e:
        load_classic(data / "gt_files", data / "jpg", "oxford5k")
    assert "2 of the 6" in str(e.value) and "a_3" in str(e.value)
    with pytest.raises(DatasetError, match="_query.txt"):
        load_classic(data / "jpg", data / "jpg", "oxford5k")


# ---------------------------------------------------------------------------- ukbench


def test_ukbench_ns_and_map(tmp_path):
    for k in range(8):
        _jpg(tmp_path / "full" / f"ukbench{k:05d}.jpg")
    ds = load_dataset("ukbench", data=tmp_path)
    assert ds.kind == "ukbench" and len(ds.queries) == 8
    assert ds.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    ranks = np.array(
        [
            [0, 1, 2, 3, 4, 5, 6, 7],  # 4 hits, AP 1
            [1, 0, 4, 2, 3, 5, 6, 7],  # top 4: 0 0 1 0 -> 3
            [2, 4, 5, 6, 0, 1, 3, 7],  # 1
            [3, 2, 1, 0, 4, 5, 6, 7],  # 4
            [4, 5, 6, 7, 0, 1, 2, 3],  # 4
            [5, 4, 7, 6, 0, 1, 2, 3],  # 4
            [6, 5, 4, 7, 0, 1, 2, 3],  # 4
            [7, 0, 1, 2, 3, 4, 5, 6],  # 1
        ]
    )
    rep = ds.evaluate(ranks)
    # N-S = (4 + 3 + 1 + 4 + 4 + 4 + 4 + 1) / 8 = 25/8
    assert rep.metrics["all"]["ns"] == pytest.approx(25 / 8)
    assert rep.per_query["ns"]["ukbench00001"] == 3
    # query 2: positives (group 0, the query included) at 0, 4, 5, 6:
    #   (1+1)/2/4 + (1/4 + 2/5)/2/4 + (2/5 + 3/6)/2/4 + (3/6 + 4/7)/2/4
    ap2 = (2 + (1 / 4 + 2 / 5) + (2 / 5 + 3 / 6) + (3 / 6 + 4 / 7)) / 8
    assert rep.per_query["all"]["ukbench00002"] == pytest.approx(ap2)
    assert rep.per_query["all"]["ukbench00000"] == 1.0
    assert "N-S" in rep.table() and "3.12" in rep.table()


def test_ukbench_duplicate_number(tmp_path):
    _jpg(tmp_path / "full" / "ukbench00000.jpg")
    _jpg(tmp_path / "thumbnails" / "ukbench00000.jpg")
    with pytest.raises(DatasetError, match="found twice"):
        load_ukbench(tmp_path)


# ---------------------------------------------------------------------------- holidays


def test_holidays_query_excluded(tmp_path):
    for n in (100000, 100001, 100002, 100100, 100101):
        _jpg(tmp_path / "jpg" / f"{n}.jpg")
    ds = load_dataset("holidays", data=tmp_path)
    assert [q.name for q in ds.queries] == ["100000", "100100"]
    assert [q.db_index for q in ds.queries] == [0, 3]
    # database order 100000 100001 100002 100100 100101 = 0..4
    # query 100000: ranking itself, 100101, 100001, 100002, 100100 -> itself removed ->
    #   positives (100001, 100002) at 1, 2: (0 + 1/2)/2/2 + (1/2 + 2/3)/2/2 = 1/8 + 7/24 = 5/12
    # query 100100: ranking itself, 100101, ... -> positive at 0 -> AP 1
    rep = ds.evaluate(np.array([[0, 4, 1, 2, 3], [3, 4, 0, 1, 2]]))
    assert rep.per_query["all"] == pytest.approx({"100000": 5 / 12, "100100": 1.0})
    assert rep.metrics["all"]["map"] == pytest.approx((5 / 12 + 1) / 2)


def test_holidays_errors(tmp_path):
    _jpg(tmp_path / "100001.jpg")
    with pytest.raises(MissingImagesError, match="100000.jpg"):
        load_holidays(tmp_path)
    _jpg(tmp_path / "holiday.jpg")
    with pytest.raises(DatasetError, match="holiday.jpg"):
        load_holidays(tmp_path)


# ---------------------------------------------------------------------------- folder


def _folder_fixture(tmp_path: Path, queries: list) -> Path:
    root = tmp_path / "demo"
    for rel in ("images/astronaut_1.jpg", "images/b.png", "images/sub/x.jpg", "images/c.jpg"):
        if rel.endswith(".png"):
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(p)
        else:
            _jpg(root / rel)
    _jpg(root / "queries" / "astronaut.jpg", size=(300, 300))
    (root / "queries.json").write_text(json.dumps({"database": "images", "queries": queries}))
    return root


def test_folder(tmp_path):
    root = _folder_fixture(
        tmp_path,
        [
            {"name": "astronaut", "image": "queries/astronaut.jpg", "box": [10, 20, 200, 240],
             "positives": ["astronaut_1.jpg", "sub/x.jpg"], "junk": []},
            {"name": "inside", "image": "images/c.jpg", "box": None, "positives": ["b.png"], "junk": ["sub/x.jpg"]},
        ],
    )
    ds = load_dataset("folder", data=root)
    assert ds.kind == "folder"
    names = [p.relative_to(root / "images").as_posix() for p in ds.database]
    assert names == ["astronaut_1.jpg", "b.png", "c.jpg", "sub/x.jpg"]
    a, inside = ds.queries
    assert a.box == (10.0, 20.0, 200.0, 240.0) and a.db_index is None
    assert inside.box is None and inside.db_index == 2  # its own image is in the database
    # astronaut: ranking c, astronaut_1, b, sub/x = 2 0 1 3 -> positives at 1, 3:
    #   (0 + 1/2)/2/2 + (1/3 + 2/4)/2/2 = 1/8 + 5/24 = 1/3 ; 1-based [2, 4]: P@1 0, P@5 kq=4 -> 2/4
    # inside: ranking c (itself, ignored), sub/x (junk), b -> positive at 0 -> AP 1, P@1 1
    rep = ds.evaluate(np.array([[2, 0, 1, 3], [2, 3, 1, 0]]))
    assert rep.per_query["all"] == pytest.approx({"astronaut": 1 / 3, "inside": 1.0})
    assert rep.metrics["all"]["mp@1"] == pytest.approx(0.5)
    assert rep.metrics["all"]["mp@5"] == pytest.approx((0.5 + 1.0) / 2)
    assert list(rep.metrics) == ["all"]


def test_folder_unknown_name(tmp_path):
    root = _folder_fixture(
        tmp_path, [{"name": "astronaut", "image": "queries/astronaut.jpg", "positives": ["nope.jpg"]}]
    )
    with pytest.raises(DatasetError) as e:
        load_folder(root)
    assert "nope.jpg" in str(e.value) and "astronaut" in str(e.value)


def test_folder_missing_pieces(tmp_path):
    with pytest.raises(DatasetError, match="queries.json"):
        load_folder(tmp_path)
    root = _folder_fixture(tmp_path, [{"name": "q", "image": "queries/gone.jpg", "positives": []}])
    with pytest.raises(MissingImagesError, match="gone.jpg"):
        load_folder(root)


# ---------------------------------------------------------------------------- by name / report


def test_unknown_dataset_lists_known(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("nosuch", data=tmp_path)
    for k in KNOWN_DATASETS:
        assert k in str(e.value)


def test_report_table_format():
    rep = Report(
        "rparis6k",
        {
            "easy": {"map": 0.851234, "mp@1": 1.0, "mp@5": 0.9, "mp@10": 0.875},
            "medium": {"map": 0.7, "mp@1": 0.95, "mp@5": 0.9, "mp@10": 0.8},
            "hard": {"map": float("nan"), "mp@1": 0.5, "mp@5": 0.4, "mp@10": 0.3},
        },
        {},
    )
    lines = rep.table().splitlines()
    assert lines[0].split() == ["rparis6k", "mAP", "mP@1", "mP@5", "mP@10"]
    assert lines[1].split() == ["Easy", "85.12", "100.00", "90.00", "87.50"]
    assert lines[2].split()[0] == "Medium" and lines[3].split()[:2] == ["Hard", "nan"]
    assert math.isnan(rep.to_dict()["metrics"]["hard"]["map"])
