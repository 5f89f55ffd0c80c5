import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from instar import Index
from instar.cli import app

FAST = ["--preset", "rootsift-vlad", "--set", "pooling.k=8", "--set", "features.max_keypoints=300", "--set", "image.max_size=256"]


def instar(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "instar", *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"instar {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_index_search_html_end_to_end(tmp_path, photos):
    out = tmp_path / "my.index"
    p = instar("index", photos, "--out", out, "-q", *FAST)
    assert "8 images (added 8" in p.stdout
    # a query: a box around the coffee cup region of the coffee photo
    w, h = Image.open(photos / "coffee.jpg").size
    box = f"{w * 0.1:.0f},{h * 0.1:.0f},{w * 0.9:.0f},{h * 0.9:.0f}"
    p = instar("search", out, photos / "coffee.jpg", "--box", box, "-k", "3", "--json", "--html", tmp_path / "hits.html")
    hits = json.loads(p.stdout)
    assert len(hits) == 3 and hits[0]["name"] == "coffee.jpg" and hits[0]["rank"] == 1
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    page = (tmp_path / "hits.html").read_text()
    assert page.count('class="hit"') == 3 and "coffee.jpg" in page and page.count("data:image/jpeg;base64,") == 4
    # re-running the same command resumes: nothing new to add
    p = instar("index", photos, "--out", out, "-q")
    assert "added 0" in p.stdout and "unchanged 8" in p.stdout


def test_presets_lists_every_preset():
    r = CliRunner().invoke(app, ["presets"])
    assert r.exit_code == 0
    for name in ("mac", "spoc", "gem", "crow", "rmac-vgg16", "ipa-sum-vgg16", "rootsift-vlad"):
        assert f"\n{name}" in "\n" + r.stdout
    assert "sscd-spoc-lite0-sp  [default]" in r.stdout


def test_clear_errors(tmp_path, photos):
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(photos), "--out", str(tmp_path / "x.index"), "--preset", "nope"])
    assert r.exit_code == 2 and "unknown preset 'nope'" in r.output
    assert not (tmp_path / "x.index").exists()
    r = runner.invoke(app, ["search", str(tmp_path / "absent.index"), str(photos / "coffee.jpg")])
    assert r.exit_code == 2 and "not an instar index" in r.output
    r = runner.invoke(app, ["index", str(photos), "--out", str(tmp_path / "y.index"), "--set", "pooling.width=3"])
    assert r.exit_code == 2 and "pooling.width" in r.output


def test_existing_index_refuses_another_preset(tmp_path, photos):
    out = tmp_path / "z.index"
    instar("index", photos, "--out", out, "-q", *FAST)
    p = instar("index", photos, "--out", out, "--preset", "rootsift-vlad", check=False)
    assert p.returncode == 2 and "another preset configuration" in p.stderr
    assert len(Index.open(out)) == 8  # nothing lost
