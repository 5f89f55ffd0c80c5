"""Issue 7 in real processes: `instar index` adding while another process searches in a loop, and `kill -9` at
random points of an add followed by a resume. Both must end with exactly the rows of an uninterrupted,
sequential build made with the same learned model."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instar import Index, list_images
from instar.presets import load_preset
from instar.store import Store, connect

HELPER = Path(__file__).with_name("search_loop.py")
N_IMAGES = 60


def index_command(corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "instar.cli", "index", str(corpus), "--out", str(out), "-q", "--batch-size", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, photos) -> Path:
    """60 small crops of the test photographs, so an add makes 30 commits of 2."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(7)
    sources = [Image.open(p).convert("RGB") for p in list_images(photos)]
    for i in range(N_IMAGES):
        im = sources[i % len(sources)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch))
        crop.thumbnail((128, 128))
        crop.save(root / f"img{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def empty_index(tmp_path_factory, photos) -> Path:
    """An index with its model learned and no image yet: every build below starts from a copy of it."""
    preset = load_preset("rootsift-vlad").with_overrides(
        {"pooling.k": "8", "features.max_keypoints": "300", "image.max_size": "256"})
    path = tmp_path_factory.mktemp("model") / "empty.index"
    Index.create(path, preset, list_images(photos)).close()
    return path


def stored(path: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (sha256 of the file, stored descriptor bytes) of every live image; the index must verify clean."""
    with Index.open(path) as idx:
        assert idx.verify() == []
        return {r.name: (r.sha256, np.asarray(idx.vectors[r.row]).tobytes()) for r in idx.records()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, empty_index, corpus) -> dict[str, tuple[str, bytes]]:
    """The sequential, uninterrupted build."""
    path = tmp_path_factory.mktemp("ref") / "ref.index"
    shutil.copytree(empty_index, path)
    with Index.open(path) as idx:
        report = idx.add(list_images(corpus), root=corpus)
    assert report.added == N_IMAGES, report.failed
    return stored(path)


def committed_rows(path: Path) -> int:
    db = connect(path / "index.sqlite")
    try:
        return Store(path, db).snapshot().n_rows
    finally:
        db.close()


def test_searching_while_indexing_never_damages_a_row(tmp_path, empty_index, corpus, reference):
    idx = tmp_path / "live.index"
    shutil.copytree(empty_index, idx)
    stop, log = tmp_path / "stop", tmp_path / "searches.jsonl"
    searcher = subprocess.Popen([sys.executable, str(HELPER), str(idx), str(corpus / "img000.jpg"), str(stop), str(log)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().strip()) and searcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        indexer = subprocess.run(index_command(corpus, idx), capture_output=True, text=True, timeout=180)
    finally:
        stop.touch()
        _, err = searcher.communicate(timeout=120)
    assert searcher.returncode == 0, f"a search failed while indexing:\n{err}"
    assert indexer.returncode == 0, indexer.stderr
    assert "Traceback" not in err + indexer.stderr
    assert f"added {N_IMAGES}" in indexer.stdout
    rounds = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    seen = sorted({r["rows"] for r in rounds})
    assert len(seen) >= 3 and 0 < seen[1] < N_IMAGES, f"the searches did not overlap the commits: {seen}"
    assert rounds[-1]["rows"] == N_IMAGES and rounds[-1]["hits"][0] == "img000.jpg"
    assert stored(idx) == reference and committed_rows(idx) == N_IMAGES  # no row twice, none tombstoned


def test_kill_9_at_random_points_of_an_add_then_resume(tmp_path, empty_index, corpus, reference):
    idx = tmp_path / "killed.index"
    shutil.copytree(empty_index, idx)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    killed_at = []
    for _ in range(3):
        target = committed_rows(idx) + rng.randrange(2, 10)  # kill once this run has committed a few rows ...
        proc = subprocess.Popen(index_command(corpus, idx), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and committed_rows(idx) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))  # ... plus a random moment inside the next batch's write, fsync or commit
        assert proc.poll() is None, f"seed {seed}: the add ended before the kill at {target} rows: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at.append((committed_rows(idx), os.path.getsize(idx / "global.float32")))
        # whatever the moment of the kill, what is committed is intact and equals the reference
        part = stored(idx)
        assert len(part) >= target and all(reference[name] == value for name, value in part.items()), f"seed {seed}"
    resumed = subprocess.run(index_command(corpus, idx), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert stored(idx) == reference, f"seed {seed}, killed at (rows, bytes) {killed_at}"
    assert committed_rows(idx) == N_IMAGES  # an interrupted batch was redone, not stored twice
    assert os.path.getsize(idx / "global.float32") == N_IMAGES * 1024 * 4
