"""The CLI as a new user meets it (issue 16), in real subprocesses: --set on an existing index is refused
unless it only concerns search, names under a folder of symbolic links are relative to that folder and
removable by that name, --html refuses a missing folder, and long phases say what they do."""
import os
import re
import subprocess
import sys

import pytest

from instar import Index

FAST = ["--preset", "rootsift-vlad", "--set", "pooling.k=8", "--set", "features.max_keypoints=300", "--set", "image.max_size=256"]


def instar(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "instar", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("cli-hardening") / "p.index"
    p = instar("index", photos, "--out", out, "-q", *FAST)
    assert p.returncode == 0, p.stderr
    return out


@pytest.mark.parametrize("setting, said", [
    ("whitening.method=pca", "whitening.method: 'none' in the index, 'pca' asked"),
    ("pooling.k=16", "pooling.k: 8 in the index, 16 asked"),
    ("nosuch.key=1", "unknown section 'nosuch'"),
    ("pooling.k=many", "'many' is not a valid int"),
    ("pooling.nokey=1", "unknown key"),
])
def test_set_on_an_existing_index_is_refused_when_it_differs(built, photos, setting, said):
    before = sorted((p.name, p.stat().st_size) for p in built.iterdir())
    p = instar("index", photos, "--out", built, "--set", setting)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert said in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert sorted((p.name, p.stat().st_size) for p in built.iterdir()) == before


def test_search_time_set_on_an_existing_index_is_not_stored(built, photos):
    p = instar("index", photos, "--out", built, "--set", "expansion.method=alpha-qe", "--set", "pooling.k=8")
    assert p.returncode == 0, p.stderr
    assert "expansion.method: search-time settings are not stored" in p.stderr.replace("expansion.method, ", "")
    with Index.open(built) as idx:
        assert idx.preset["expansion"]["method"] == "aqe"   # the stored preset's, unchanged


@pytest.mark.slow   # three subprocesses and an index build: ~13 s on a loaded 2-core machine
def test_names_under_a_folder_of_symlinks_are_relative_to_it(tmp_path, photos):
    links = tmp_path / "links"
    (links / "a").mkdir(parents=True)
    for photo in sorted(photos.rglob("*.jpg")):
        (links / "a" / photo.name).symlink_to(photo)
    (links / "b.jpg").symlink_to(photos / "chelsea.jpg")   # a second link to one file: stored once
    out = tmp_path / "l.index"
    p = instar("index", links, "--out", out, "-q", *FAST)
    assert p.returncode == 0, p.stderr
    with Index.open(out) as idx:
        names = sorted(r.name for r in idx.records())
    assert "a/coffee.jpg" in names and all(not os.path.isabs(n) and str(photos) not in n for n in names), names
    p = instar("search", out, photos / "coffee.jpg", "-k", "3")
    assert p.returncode == 0 and p.stdout.split()[2] == "a/coffee.jpg" and str(photos) not in p.stdout, p.stdout
    p = instar("remove", out, "a/coffee.jpg")
    assert p.returncode == 0 and "removed a/coffee.jpg" in p.stdout, p.stderr


def test_html_in_a_missing_folder_is_refused(built, photos, tmp_path):
    page = tmp_path / "nonexistent-dir" / "x.html"
    p = instar("search", built, photos / "coffee.jpg", "--html", page)
    assert p.returncode == 2 and f"{page}: cannot be created: the folder {page.parent} does not exist" in p.stderr
    assert p.stdout == "" and not page.parent.exists()


def test_long_phases_say_what_they_do(tmp_path, photos):
    # a phase speaks once it has run INSTAR_PHASE_AFTER seconds (1 by default; 0 here, so that this small index's
    # phases, quick on an idle machine, speak too)
    env = {**os.environ, "INSTAR_PHASE_AFTER": "0"}
    p = instar("index", photos, "--out", tmp_path / "n.index", *FAST, env=env)
    assert p.returncode == 0, p.stderr
    assert "learning preset rootsift-vlad's model on 8 training images ..." in p.stderr, p.stderr
    assert re.search(r"learning preset rootsift-vlad's model on 8 training images: done in \d+\.\d s", p.stderr)
    p = instar("search", tmp_path / "n.index", photos / "coffee.jpg", "-k", "2", env=env)
    assert p.returncode == 0 and re.search(r"opening .*n\.index .* for coffee\.jpg: done in \d+\.\d s", p.stderr), p.stderr


@pytest.mark.slow
def test_demo_warns_about_nothing_of_its_own(tmp_path):
    p = instar("demo", "--out", tmp_path / "demo", "-q", timeout=900)
    assert p.returncode == 0, p.stderr
    assert "WARNING" not in p.stderr and "no usable content" not in p.stderr, p.stderr
    # the default preset describes every demo image; a RootSIFT-only preset skips the colour wheel, and says so
    assert "skipped" not in p.stderr, p.stderr
    p = instar("demo", "--out", tmp_path / "demo-vlad", "-q", "--preset", "rootsift-vlad", timeout=900)
    assert p.returncode == 0 and "WARNING" not in p.stderr, p.stderr
    assert "skipped distractor_colorwheel.jpg: a smooth colour wheel has no corners for RootSIFT; expected" in p.stderr
