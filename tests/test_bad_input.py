"""Bad input as a new user gives it (issue 7): every case gets a clear error naming the file and the problem, exit
code 2 for user errors, no traceback, and an existing index is left byte-identical (a folder run keeps every
stored row). The corpus is built here; the CLI runs in-process (typer's CliRunner) or, where stderr and warnings
of a real process matter, as a subprocess."""
import hashlib
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from instar import Index
from instar.cli import app

FAST = ["--preset", "rootsift-vlad", "--set", "pooling.k=8", "--set", "features.max_keypoints=300", "--set", "image.max_size=256"]


def cli(*args):
    """The CLI in-process; never a traceback, never an exception other than the exit."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), f"{args}: {r.exception!r}\n{r.output}"
    assert "Traceback" not in r.output, r.output
    return r


def cli_process(*args):
    """The CLI as a real process, for what only a process shows (raw warnings on stderr, tracebacks)."""
    p = subprocess.run([sys.executable, "-m", "instar.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=120)
    assert "Traceback" not in p.stderr and "Warning" not in p.stderr, p.stderr
    return p


def tree_hash(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones and SQLite's -wal/-shm included) -> SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb costs nothing to write)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


UNICODE = "ünïcödé café.jpg"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, photos) -> Path:
    bad = tmp_path_factory.mktemp("bad")
    coffee = Image.open(photos / "coffee.jpg").convert("RGB")
    data = (photos / "coffee.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) * 2 // 5])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("hello, I am not a photograph\n")
    coffee.convert("CMYK").save(bad / "cmyk.jpg", quality=95)
    chelsea = Image.open(photos / "chelsea.jpg").convert("RGBA")
    chelsea.putalpha(Image.linear_gradient("L").resize(chelsea.size))
    chelsea.save(bad / "rgba.png")
    astronaut = Image.open(photos / "astronaut.jpg").convert("RGB")
    frames = [astronaut, astronaut.rotate(90), astronaut.transpose(Image.FLIP_LEFT_RIGHT)]
    frames[0].save(bad / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rocket = Image.open(photos / "rocket.jpg")
    exif = rocket.getexif()
    exif[0x0112] = 6  # displayed after a 90-degree clockwise turn: the stored pixels are turned the other way
    rocket.rotate(90, expand=True).save(bad / "exif_rotated.jpg", exif=exif, quality=95)
    shutil.copy(photos / "chelsea.jpg", bad / UNICODE)
    shutil.copy(photos / "rocket.jpg", bad / "with spaces.jpg")
    (bad / "bomb.png").write_bytes(png_header(50000, 50000))
    (bad / "huge13k.png").write_bytes(png_header(13000, 13000))
    grey = np.asarray(coffee.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(bad / "gray16.png")  # 16-bit greyscale, full range
    Image.new("RGB", (1, 1), (200, 30, 30)).save(bad / "one_pixel.png")
    Image.new("RGB", (20000, 20), (30, 30, 200)).save(bad / "strip_20000x20.png")
    Image.new("RGB", (200, 150), (128, 128, 128)).save(bad / "blank.png")
    os.symlink("loop_b.jpg", bad / "loop_a.jpg")
    os.symlink("loop_a.jpg", bad / "loop_b.jpg")
    os.symlink("gone.jpg", bad / "dangling.jpg")
    assert Image.open(bad / "gray16.png").mode == "I;16"
    return bad


@pytest.fixture(scope="module")
def base(tmp_path_factory, photos) -> Path:
    out = tmp_path_factory.mktemp("base") / "base.index"
    r = cli("index", photos, "--out", out, "-q", *FAST)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture
def unchanged(base):
    """Asserts the base index directory is byte-identical after the test."""
    before = tree_hash(base)
    yield base
    assert tree_hash(base) == before


def copy_index(base: Path, tmp_path: Path, name="copy.index") -> Path:
    shutil.copytree(base, tmp_path / name)
    return tmp_path / name


# --- queries that must be refused --------------------------------------------------------------
QUERY_ERRORS = [
    ("truncated.jpg", None, "damaged or truncated image data"),
    ("empty.jpg", None, "empty file (0 bytes)"),
    ("text.jpg", None, "not an image format Pillow can identify"),
    ("bomb.png", None, "declares 50000x50000 pixels (2500.0 megapixels), above the limit of 40.0 megapixels"),
    ("huge13k.png", None, "declares 13000x13000 pixels (169.0 megapixels), above the limit"),
    ("one_pixel.png", None, "too small: the 1x1 image has a side below 32 pixels"),
    ("strip_20000x20.png", None, "too small: the 20000x20 image, 256x1 after shrinking to 256 pixels"),
    ("blank.png", None, "no usable content: its descriptor is all zero"),
    ("loop_a.jpg", None, "symbolic link loop"),
    ("dangling.jpg", None, "broken symbolic link"),
    ("absent.jpg", None, "no such file"),
    ("cmyk.jpg", "10,10,10.4,10.4", "too small: the box 10,10,10.4,10.4 (1x1 pixels)"),
    ("cmyk.jpg", "nan,0,50,50", "--box 'nan,0,50,50': every value must be a finite number"),
    ("cmyk.jpg", "50,50,10,10", "box 50,50,10,10 is empty (need x1 > x0 and y1 > y0)"),
    ("cmyk.jpg", "5000,5000,6000,6000", "box 5000,5000,6000,6000 lies outside the 256x171 image"),
    ("cmyk.jpg", "1,2,3", "expected four numbers x0,y0,x1,y1, got 3"),
]


@pytest.mark.parametrize("name,box,problem", QUERY_ERRORS, ids=[f"{n}-{b}" for n, b, _ in QUERY_ERRORS])
def test_bad_query_is_refused_naming_file_and_problem(corpus, unchanged, name, box, problem):
    query = corpus / name
    r = cli("search", unchanged, query, *(["--box", box] if box else []))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {query}: ") and problem in r.stderr, r.stderr
    assert r.stdout == ""  # no hits


def test_bomb_query_in_a_real_process_shows_no_pillow_error_or_warning(corpus, unchanged):
    for name in ("bomb.png", "huge13k.png"):
        p = cli_process("search", unchanged, corpus / name)
        assert p.returncode == 2 and p.stderr.startswith(f"error: {corpus / name}: declares "), p.stderr
        assert "Decompression" not in p.stderr and "not decoded" in p.stderr


def test_pixel_limit_is_configurable(corpus, unchanged, monkeypatch):
    monkeypatch.setenv("INSTAR_MAX_PIXELS", "10000")
    r = cli("search", unchanged, corpus / "cmyk.jpg")
    assert r.exit_code == 2 and "declares 256x171 pixels" in r.stderr and "limit of 10000 pixels" in r.stderr
    monkeypatch.setenv("INSTAR_MAX_PIXELS", "lots")
    r = cli("search", unchanged, corpus / "cmyk.jpg")
    assert r.exit_code == 2 and "INSTAR_MAX_PIXELS='lots': expected a whole number of pixels" in r.stderr


# --- odd but valid queries work ------------------------------------------------------------------
GOOD_QUERIES = [("gray16.png", "coffee.jpg"), ("cmyk.jpg", "coffee.jpg"), ("rgba.png", "chelsea.jpg"),
                ("anim.gif", "astronaut.jpg"), ("exif_rotated.jpg", "rocket.jpg"), (UNICODE, "chelsea.jpg"),
                ("with spaces.jpg", "rocket.jpg")]


@pytest.mark.parametrize("name,expected", GOOD_QUERIES)
def test_odd_but_valid_query_finds_its_source(corpus, unchanged, name, expected):
    r = cli("search", unchanged, corpus / name, "-k", "3", "--expansion", "none")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].split()[-1] == expected, r.stdout


def test_16bit_grey_is_scaled_not_clipped(corpus, photos):
    from instar.extract.images import load_image
    grey16 = np.asarray(load_image(corpus / "gray16.png"))[..., 0].astype(float)
    grey8 = np.asarray(Image.open(photos / "coffee.jpg").convert("L"), dtype=float)
    assert abs(grey16.mean() - grey8.mean()) < 1 and np.abs(grey16 - grey8).max() <= 1  # not 99 % white


# --- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", ["0", "-1"])
def test_k_below_one_is_refused(corpus, unchanged, k):
    r = cli("search", unchanged, corpus / "cmyk.jpg", "-k", k)
    assert r.exit_code == 2 and r.stderr == f"error: -k {k}: the number of hits must be at least 1\n"


def test_unknown_expansion_is_refused_before_describing(corpus, unchanged):
    r = cli("search", unchanged, corpus / "bomb.png", "--expansion", "magic")
    assert r.exit_code == 2 and r.stderr == "error: --expansion 'magic': expected one of none, aqe, alpha-qe, gqe, lqe, gqe+lqe, diffusion, alpha-dba\n"


def test_k_validated_in_a_real_process(corpus, unchanged):
    p = cli_process("search", unchanged, corpus / "cmyk.jpg", "-k", "-1")
    assert p.returncode == 2 and "negative dimensions" not in p.stderr and "at least 1" in p.stderr


def test_html_to_a_folder_or_under_a_file_is_refused_before_searching(corpus, unchanged, tmp_path):
    r = cli("search", unchanged, corpus / "cmyk.jpg", "--html", tmp_path)
    assert r.exit_code == 2 and r.stderr == f"error: {tmp_path}: is a folder; give the page a file name, e.g. hits.html\n"
    assert r.stdout == ""  # refused before any hit was printed
    target = corpus / "cmyk.jpg" / "hits.html"
    r = cli("search", unchanged, corpus / "cmyk.jpg", "--html", target)
    assert r.exit_code == 2 and f"error: {target}: cannot be created: {corpus / 'cmyk.jpg'} is a file" in r.stderr
    assert r.stdout == ""


def test_batch_size_below_one_is_refused(photos, unchanged):
    r = cli("index", photos, "--out", unchanged, "--batch-size", "0")
    assert r.exit_code == 2 and "--batch-size 0: must be at least 1" in r.stderr


def test_folder_without_images_is_refused(tmp_path, unchanged):
    (tmp_path / "notes.txt").write_text("no photos here")
    r = cli("index", tmp_path, "--out", unchanged)
    assert r.exit_code == 2 and r.stderr == f"error: {tmp_path}: no image files found\n"


# --- damaged or foreign index directories -------------------------------------------------------
def test_garbage_model_file(base, tmp_path, corpus, photos):
    idx = copy_index(base, tmp_path)
    for content, problem in [(b"\x80\x04garbage, maybe a pickle" * 10, "not a NumPy .npz model file"),
                             (b"PK\x03\x04 not really a zip", "damaged model archive"),
                             (b"", "empty or truncated model file")]:
        (idx / "model.npz").write_bytes(content)
        before = tree_hash(idx)
        for args in (["search", idx, corpus / "cmyk.jpg"], ["index", photos, "--out", idx]):
            r = cli(*args)
            assert r.exit_code == 2 and r.stderr.startswith(f"error: {idx / 'model.npz'}: {problem}"), r.stderr
            assert "allow_pickle" not in r.output and "pickle.load" not in r.output
            assert tree_hash(idx) == before


def test_database_missing_the_images_table(base, tmp_path, corpus):
    idx = copy_index(base, tmp_path)
    with sqlite3.connect(idx / "index.sqlite") as db:
        db.execute("DROP TABLE images")
    db.close()
    before = tree_hash(idx)
    r = cli("search", idx, corpus / "cmyk.jpg")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {idx / 'index.sqlite'}: not a complete instar index database (missing table images)")
    assert "OperationalError" not in r.output and tree_hash(idx) == before


def test_not_a_database(base, tmp_path, corpus):
    idx = copy_index(base, tmp_path)
    (idx / "index.sqlite").write_bytes(b"this is not SQLite" * 100)
    for name in ("index.sqlite-wal", "index.sqlite-shm"):
        (idx / name).unlink(missing_ok=True)
    before = tree_hash(idx)
    r = cli("search", idx, corpus / "cmyk.jpg")
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {idx / 'index.sqlite'}: not a readable SQLite database")
    assert tree_hash(idx) == before


def test_format_1_index_says_how_to_rebuild(tmp_path, corpus):
    old = tmp_path / "old.index"
    old.mkdir()
    with sqlite3.connect(old / "index.sqlite") as db:
        db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                         "INSERT INTO meta VALUES ('format_version', '1'), ('dim', '4');"
                         "CREATE TABLE images (id INTEGER PRIMARY KEY, row INTEGER, path TEXT);")
    db.close()
    (old / "vectors.f32").write_bytes(bytes(16))
    np.savez(old / "model.npz")
    before = tree_hash(old)
    r = cli("search", old, corpus / "cmyk.jpg")
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {old}: index format 1, written by an older instar")
    assert "instar index PHOTOS --out NEW.index" in r.stderr and tree_hash(old) == before


def test_truncated_column_file(base, tmp_path, corpus, photos):
    idx = copy_index(base, tmp_path)
    with open(idx / "global.float32", "r+b") as f:
        f.truncate(1000)
    before = tree_hash(idx)
    for args in (["search", idx, corpus / "cmyk.jpg"], ["index", photos, "--out", idx]):
        r = cli(*args)
        assert r.exit_code == 2 and r.stderr.startswith(f"error: {idx / 'global.float32'}: holds 1000 bytes but the 8 committed")
        assert tree_hash(idx) == before


def test_index_rerun_reextracts_damaged_rows(base, tmp_path, photos):
    idx = copy_index(base, tmp_path)
    with Index.open(idx) as i:
        good = {r.name: np.array(i.vectors[r.row]) for r in i.records()}
        row, dim = i.records()[3].row, i.dim
    with open(idx / "global.float32", "r+b") as f:
        f.seek(row * dim * 4)
        f.write(bytes(dim * 4))  # a row zeroed, as issue 7's race left them
    r = cli("index", photos, "--out", idx, "-q")
    assert r.exit_code == 0, r.output
    assert "checked their stored rows: 1 damaged" in r.stderr and "re-extracted 1 of 1 damaged rows" in r.stderr
    assert "unchanged 8" in r.stdout
    with Index.open(idx) as i:
        assert i.verify() == [] and len(i) == 8
        assert all(np.array_equal(i.vectors[rec.row], good[rec.name]) for rec in i.records())


# --- a folder full of bad files -----------------------------------------------------------------
SKIPPED = {"truncated.jpg": "damaged or truncated image data", "empty.jpg": "empty file (0 bytes)",
           "text.jpg": "not an image format Pillow can identify", "bomb.png": "declares 50000x50000 pixels",
           "huge13k.png": "declares 13000x13000 pixels", "one_pixel.png": "too small: the 1x1 image",
           "strip_20000x20.png": "too small: the 20000x20 image", "blank.png": "no usable content",
           "loop_a.jpg": "symbolic link loop", "loop_b.jpg": "symbolic link loop",
           "dangling.jpg": "broken symbolic link"}
ADDED = {"cmyk.jpg", "rgba.png", "anim.gif", "exif_rotated.jpg", UNICODE, "with spaces.jpg", "gray16.png"}


def test_folder_of_bad_files_is_indexed_around_them_and_stored_rows_are_kept(base, corpus, tmp_path):
    idx = copy_index(base, tmp_path)
    stored = (base / "global.float32").read_bytes()
    with Index.open(base) as b:
        records = b.records()
    p = cli_process("index", corpus, "--out", idx, "-q")
    assert p.returncode == 0, p.stderr
    assert f"{idx}: 15 images (added 7, updated 0, unchanged 0, unreadable 11)" in p.stdout
    for name, problem in SKIPPED.items():
        assert f"skipped {corpus / name}: {problem}" in p.stderr, (name, p.stderr)
        assert p.stderr.count(f"{corpus / name}:") == 1, p.stderr  # reported once, not again by a log line
    with Index.open(idx) as i:
        assert (idx / "global.float32").read_bytes()[: len(stored)] == stored  # nothing stored lost or changed
        assert i.records()[:8] == records and i.verify() == []
        assert {r.name for r in i.records()[8:]} == ADDED
        assert {Path(path).name for path, _ in i.failures()} == set(SKIPPED) - {"loop_a.jpg", "loop_b.jpg", "dangling.jpg"}


def test_new_index_on_a_folder_of_bad_files_trains_around_them(corpus, tmp_path):
    r = cli("index", corpus, "--out", tmp_path / "new.index", "-q", *FAST)
    assert r.exit_code == 0, r.output
    assert "added 7" in r.stdout and "unreadable 11" in r.stdout


# --- photos deleted after indexing; remove and prune ---------------------------------------------
def test_deleted_photo_placeholder_remove_and_prune(photos, tmp_path):
    coll = tmp_path / "coll"
    shutil.copytree(photos, coll)
    idx = tmp_path / "c.index"
    assert cli("index", coll, "--out", idx, "-q", *FAST).exit_code == 0
    (coll / "chelsea.jpg").unlink()
    before = tree_hash(idx)
    page = tmp_path / "hits.html"
    r = cli("search", idx, coll / "coffee.jpg", "-k", "8", "--html", page)
    assert r.exit_code == 0, r.output
    assert f"warning: {coll / 'chelsea.jpg'}: indexed file is gone" in r.stderr and len(r.stdout.splitlines()) == 8
    html = page.read_text()
    assert html.count('class="hit"') == 8 and html.count('class="missing"') == 1 and "no such file" in html
    assert html.count("data:image/jpeg;base64,") == 8  # the query and the 7 hits still on disk
    assert tree_hash(idx) == before
    # remove: all named images must be in the index, or nothing is removed
    r = cli("remove", idx, "chelsea.jpg", "nope.jpg")
    assert r.exit_code == 2 and r.stderr.startswith("error: nope.jpg: not in the index") and tree_hash(idx) == before
    r = cli("remove", idx, "chelsea.jpg", coll / "rocket.jpg")
    assert r.exit_code == 0 and "removed chelsea.jpg" in r.stdout and f"{idx}: 6 images" in r.stdout
    r = cli("search", idx, coll / "coffee.jpg", "-k", "8")
    assert len(r.stdout.splitlines()) == 6 and "chelsea" not in r.stdout and "rocket" not in r.stdout
    # prune drops what is gone; re-indexing brings back the removed rocket.jpg as a fresh row
    (coll / "astronaut.jpg").unlink()
    r = cli("index", coll, "--out", idx, "--prune", "-q")
    assert r.exit_code == 0 and "pruned 1 images whose files are gone" in r.stderr
    assert f"{idx}: 6 images (added 1, updated 0, unchanged 5" in r.stdout
    with Index.open(idx) as i:
        names = {rec.name for rec in i.records()}
    assert names == {"coffee.jpg", "rocket.jpg", "immunohistochemistry.jpg", "hubble_deep_field.jpg",
                     "stereo_motorcycle.jpg", "sub/retina.jpg"}
    r = cli("remove", tmp_path / "absent.index", "x.jpg")
    assert r.exit_code == 2 and "not an instar index (no such folder)" in r.stderr


def test_symlink_problems_are_reported_by_list_images(corpus):
    from instar.extract.images import list_images
    problems = []
    found = list_images(corpus, problems=problems)
    assert {p.name for p in found} == set(SKIPPED) - {"loop_a.jpg", "loop_b.jpg", "dangling.jpg"} | ADDED
    assert sorted((p.name, why) for p, why in problems) == [
        ("dangling.jpg", "broken symbolic link (its target does not exist)"),
        ("loop_a.jpg", "symbolic link loop"), ("loop_b.jpg", "symbolic link loop")]
