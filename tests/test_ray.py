"""`instar index --ray` on a REAL local Ray cluster: a head node and a second node on 127.0.0.1, one CPU each,
started and stopped by these tests (`ray start --block`, so ending the two commands stops their nodes)."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instar import Index, list_images, search
from instar.extract.images import content_hash

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
FAST = ["--preset", "rootsift-vlad", "--set", "pooling.k=8", "--set", "features.max_keypoints=300", "--set", "image.max_size=256"]
# Recent Ray starts a head with token authentication (the token in ~/.ray/auth_token); the joining node and the
# drivers on this machine use it when told to
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nodes_alive(address: str) -> int:
    out = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, env=ENV,
                         timeout=60).stdout
    active = out.partition("Active:")[2].partition("Pending:")[0]
    return active.count("node_")


def wait_started(proc: subprocess.Popen, log: Path, deadline: float) -> None:
    """Until `ray start --block` says its node runs (its log), failing with the log if it ends or takes too long."""
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """ADDRESS of a two-node cluster on 127.0.0.1 (one CPU each); both nodes stopped afterwards."""
    mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"  # for the drivers this test process runs itself
    port = free_port()
    address = f"127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("ray-logs")
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    procs = [subprocess.Popen([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                               "--include-dashboard=false", *common], env=ENV, start_new_session=True,
                              stdout=open(logs / "head.log", "w"), stderr=subprocess.STDOUT)]
    try:
        deadline = time.time() + 400  # a loaded 2-core machine starts a Ray node slowly
        wait_started(procs[0], logs / "head.log", deadline)
        for attempt in range(3):  # a node joining a head still settling may be refused (GCS auth); join again
            node = subprocess.Popen([RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common],
                                    env=ENV, start_new_session=True, stdout=open(logs / "node.log", "w"),
                                    stderr=subprocess.STDOUT)
            procs.append(node)
            while node.poll() is None and "Ray runtime started" not in (logs / "node.log").read_text():
                assert time.time() < deadline, (logs / "node.log").read_text()[-3000:]
                time.sleep(1)
            if node.poll() is None:
                break
            time.sleep(5)
        assert procs[-1].poll() is None, (logs / "node.log").read_text()[-3000:]
        while nodes_alive(address) < 2:
            assert time.time() < deadline, "the cluster never showed two nodes"
            time.sleep(2)
        yield address
    finally:
        started = descendants({p.pid for p in procs})  # Ray's workers leave the groups: stop them by pid
        for p in reversed(procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile: nothing left to stop
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 60
        while time.time() < deadline and any(alive(pid) for pid in started):
            time.sleep(1)
        for pid in started:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=30)
        if mode is None:
            del os.environ["RAY_AUTH_MODE"]
        else:
            os.environ["RAY_AUTH_MODE"] = mode
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start --head` leaves its address here for ray.init()
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def parents() -> dict[int, int]:
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out[int(proc.name)] = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # a process that ended while we looked
    return out


def descendants(roots: set[int]) -> set[int]:
    """The processes below `roots`, the roots included."""
    ppid = parents()
    found = set(roots)
    grew = True
    while grew:
        more = {pid for pid, parent in ppid.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def instar_index(*args, **kw):
    return subprocess.run([sys.executable, "-m", "instar", "index", *map(str, args), "-q"], capture_output=True,
                          text=True, env=ENV, timeout=600, **kw)


def rows_of(index: Index) -> list[tuple]:
    snap = index.snapshot()
    return [(r.row, r.name, r.width, r.height, r.sha256, snap.row_bytes(r.row)) for r in index.records()]


def test_ray_index_equals_the_single_process_index(cluster, photos, tmp_path):
    local = instar_index(photos, "--out", tmp_path / "local.index", *FAST)
    assert local.returncode == 0, local.stderr
    on_ray = instar_index(photos, "--out", tmp_path / "ray.index", *FAST, "--ray", cluster, "--batch-size", "3")
    assert on_ray.returncode == 0, on_ray.stderr
    with Index.open(tmp_path / "local.index") as a, Index.open(tmp_path / "ray.index") as b:
        assert len(a) == len(list_images(photos))
        assert rows_of(b) == rows_of(a)
        for q in list_images(photos)[:3]:
            assert [(h.name, h.score) for h in search(b, q, k=5)] == [(h.name, h.score) for h in search(a, q, k=5)]
    again = instar_index(photos, "--out", tmp_path / "ray.index", "--ray", cluster)
    assert again.returncode == 0 and "unchanged 8" in again.stdout, again.stdout + again.stderr


def test_cli_ray_job_writes_shards_equal_to_the_local_shards(cluster, photos, tmp_path):
    from instar import open_index
    from instar.index.shards import Manifest, shard_of
    local = instar_index(photos, "--out", tmp_path / "local.shards.json", "--shards", 3, *FAST)
    assert local.returncode == 0, local.stderr
    on_ray = instar_index(photos, "--out", tmp_path / "ray.shards.json", "--shards", 3, *FAST, "--ray", cluster,
                          "--batch-size", "3")
    assert on_ray.returncode == 0 and "in 3 shards" in on_ray.stdout, on_ray.stderr
    single = instar_index(photos, "--out", tmp_path / "single.index", *FAST)
    assert single.returncode == 0, single.stderr
    pairs = zip(Manifest.read(tmp_path / "local.shards.json").shards, Manifest.read(tmp_path / "ray.shards.json").shards)
    for i, (a, b) in enumerate(pairs):  # shard by shard, the rows of the local job, each in its owner
        with Index.open(a) as la, Index.open(b) as rb:
            assert rows_of(rb) == rows_of(la) and all(shard_of(r.name, 3) == i for r in rb.records())
    with Index.open(tmp_path / "single.index") as one, open_index(tmp_path / "ray.shards.json") as sharded:
        snap = one.snapshot()
        assert {r.name: snap.row_bytes(r.row) for r in one.records()} == \
               {r.name: sharded.latest_snapshot().row_bytes(r.row) for r in sharded.records()}
        for q in list_images(photos)[:3]:
            assert [h.name for h in search(sharded, q, k=5)] == [h.name for h in search(one, q, k=5)]
    again = instar_index(photos, "--out", tmp_path / "ray.shards.json", "--ray", cluster)
    assert again.returncode == 0 and "unchanged 8" in again.stdout, again.stdout + again.stderr


def map_workers() -> list[int]:
    """pids of this machine's Ray Data actor processes (their title names the map)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"MapWorker" in cmd and b"RayDescriber" in cmd:
                pids.append(int(proc.name))
    return pids


def test_a_worker_killed_mid_job_loses_nothing_and_stores_nothing_twice(cluster, photos, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for p in list_images(photos):
        im = Image.open(p).convert("RGB").resize((640, 480))
        for k, op in enumerate((None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
                                Image.Transpose.ROTATE_180, Image.Transpose.TRANSPOSE)):
            (im if op is None else im.transpose(op)).save(folder / f"{p.stem}-{k}.jpg", quality=90)
    out = tmp_path / "killed.index"
    job = subprocess.Popen([sys.executable, "-m", "instar", "index", str(folder), "--out", str(out), "-q",
                            "--preset", "rootsift-vlad", "--set", "pooling.k=8", "--set", "features.max_keypoints=2000", "--set",
                            "image.max_size=640", "--ray", cluster, "--batch-size", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    killed = None
    deadline = time.time() + 300
    while job.poll() is None and time.time() < deadline and killed is None:
        if (out / "index.sqlite").exists():
            with Index.open(out) as idx:
                stored = len(idx)
            workers = map_workers()
            if stored >= 2 and workers:
                os.kill(workers[0], signal.SIGKILL)
                killed = (workers[0], stored)
        time.sleep(0.2)
    stdout, stderr = job.communicate(timeout=600)
    assert killed is not None, f"the job ended before a worker could be killed\n{stderr[-2000:]}"
    assert job.returncode == 0, stderr[-3000:]
    files = list_images(folder)
    with Index.open(out) as idx:
        records = idx.records()
        assert killed[1] < len(files)
        assert len(records) == len(files) == len({r.name for r in records})
        assert {r.name: r.sha256 for r in records} == {p.name: content_hash(p) for p in files}
        assert np.all(np.isfinite(idx.vectors))


def test_one_ray_job_writes_shards_that_search_like_one_index(cluster, photos, tmp_path, fast_preset):
    from instar import open_index
    from instar.distributed.ray_index import index_shards_with_ray, shard_of, shutdown
    from instar.index.shards import create_shards
    files = list_images(photos)
    manifest = create_shards(tmp_path / "p.shards.json", fast_preset, files, 3)
    shards = manifest.open_shards()
    try:
        report = index_shards_with_ray(shards, files, root=photos, address=cluster, batch_size=2, commit_every=2)
    finally:
        shutdown()
        for s in shards:
            s.close()
    assert report.added == len(files) and not report.failed
    for i, shard in enumerate(manifest.shards):  # each image in the shard that owns it, once
        with Index.open(shard) as idx:
            assert all(shard_of(r.name, 3) == i for r in idx.records())
    single = Index.create(tmp_path / "single.index", fast_preset, files)
    single.add(files, root=photos)
    with open_index(manifest.path) as sharded:
        assert sorted(r.name for r in sharded.records()) == sorted(r.name for r in single.records())
        for q in files[:3]:
            assert [(h.name, h.score) for h in search(sharded, q, k=5)] == \
                   [(h.name, h.score) for h in search(single, q, k=5)]
    single.close()
