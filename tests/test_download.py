"""Dataset download: a real HTTP server on 127.0.0.1 serves archives made here; download via a mirror."""
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instar.evaluation import download as dl
from instar.evaluation.datasets import load_dataset
from instar.evaluation.download import DownloadError, UnsafeArchiveError, download_dataset, extract_archive
from instar.core.urls import mirror_url


def _jpg_bytes(color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, "JPEG")
    return buf.getvalue()


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list  # set per server

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.endswith("/truncated.tgz"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """(base URL, folder it serves, list of requested paths)."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list = []
    handler = type("H", (_Handler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/mirror/", root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


def _served(root: Path) -> Path:
    d = root / "mirror"
    d.mkdir(exist_ok=True)
    return d


def _all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- end to end


def test_rparis6k_end_to_end(server, tmp_path, monkeypatch):
    url, root, requests = server
    m = _served(root)
    # two archives nesting images in landmark folders, like the official Paris ones
    names1 = ["paris_defense_000000", "paris_defense_000001", "paris_defense_000002"]
    names2 = ["paris_eiffel_000000", "paris_eiffel_000001"]
    _tgz(m / "paris_1-v1.tgz", {f"paris/defense/{n}.jpg": _jpg_bytes() for n in names1})
    _tgz(m / "paris_2-v1.tgz", {f"paris/eiffel/{n}.jpg": _jpg_bytes() for n in names2} | {"paris/README": b"x"})
    gnd = {
        "imlist": ["paris_defense_000001", "paris_defense_000002", "paris_eiffel_000001"],
        "qimlist": ["paris_defense_000000", "paris_eiffel_000000"],
        "gnd": [
            {"bbx": [0, 0, 5, 5], "easy": [0], "hard": [1], "junk": []},
            {"bbx": [1, 1, 4, 4], "easy": [2], "hard": [], "junk": [0]},
        ],
    }
    blob = pickle.dumps(gnd)
    (m / "gnd_rparis6k.pkl").write_bytes(blob)
    # the test pickle is not the official one: give its checksum so verification is exercised
    monkeypatch.setitem(dl.KNOWN_MD5, "gnd_rparis6k.pkl", hashlib.md5(blob).hexdigest())

    out = download_dataset("rparis6k", tmp_path / "data", mirror=url, progress=False)
    assert out == tmp_path / "data" / "rparis6k"
    assert _all_files(out / "jpg") == sorted(f"{n}.jpg" for n in names1 + names2)  # flattened
    assert (out / "gnd_rparis6k.pkl").read_bytes() == blob
    assert not list((tmp_path / "data").rglob("*.part"))

    ds = load_dataset("rparis6k", data=out)
    assert len(ds.database) == 3 and [q.name for q in ds.queries] == gnd["qimlist"]
    rep = ds.evaluate(np.array([[0, 1, 2], [2, 0, 1]]))
    assert rep.metrics["medium"]["map"] == pytest.approx(1.0)

    # everything present: a second run asks the server for nothing
    n = len(requests)
    assert download_dataset("rparis6k", tmp_path / "data", mirror=url, progress=False) == out
    assert len(requests) == n


def test_oxford5k_classic_via_env_mirror_and_fallback_name(server, tmp_path, monkeypatch):
    url, root, requests = server
    m = _served(root)
    # only the old archive name is on this mirror: the downloader falls back to it
    _tgz(m / "oxbuild_images.tgz", {f"{n}.jpg": _jpg_bytes() for n in ("all_souls_000001", "all_souls_000002", "ashmolean_000000")})
    _tgz(
        m / "gt_files_170407.tgz",
        {
            "all_souls_1_query.txt": b"oxc1_all_souls_000001 1 2 5 6\n",
            "all_souls_1_good.txt": b"all_souls_000002\n",
            "all_souls_1_ok.txt": b"",
            "all_souls_1_junk.txt": b"ashmolean_000000\n",
        },
    )
    monkeypatch.setenv(dl.MIRROR_ENV, url)
    out = download_dataset("oxford5k", tmp_path / "data", progress=False, keep_archives=False)
    assert any(r.endswith("/oxbuild_images-v1.tgz") for r in requests)  # official name tried first
    assert _all_files(out) == [
        ".extracted-gt_files_170407.tgz",
        ".extracted-oxbuild_images-v1.tgz",
        "gt_files/all_souls_1_good.txt",
        "gt_files/all_souls_1_junk.txt",
        "gt_files/all_souls_1_ok.txt",
        "gt_files/all_souls_1_query.txt",
        "jpg/all_souls_000001.jpg",
        "jpg/all_souls_000002.jpg",
        "jpg/ashmolean_000000.jpg",
    ]
    assert not list((tmp_path / "data" / "downloads").iterdir())  # archives removed
    ds = load_dataset("oxford5k", data=out)
    assert ds.queries[0].db_index == 0 and ds.ground_truth[0]["ok"].tolist() == [1]


def test_ukbench_zip_takes_full_images(server, tmp_path):
    url, root, _ = server
    m = _served(root)
    with zipfile.ZipFile(m / "ukbench.zip", "w") as zf:
        for k in range(4):
            zf.writestr(f"full/ukbench{k:05d}.jpg", _jpg_bytes())
            zf.writestr(f"thumbnails/ukbench{k:05d}.jpg", _jpg_bytes())
    out = download_dataset("ukbench", tmp_path / "data", mirror=url.rstrip("/"), progress=False)
    assert _all_files(out / "jpg") == [f"ukbench{k:05d}.jpg" for k in range(4)]
    ds = load_dataset("ukbench", data=out)
    rep = ds.evaluate(np.array([[0, 1, 2, 3]] * 4))
    assert rep.metrics["all"]["ns"] == 4.0


def test_holidays_from_local_folder_mirror(tmp_path):
    m = tmp_path / "localmirror"
    m.mkdir()
    _tgz(m / "jpg1.tar.gz", {"jpg/100000.jpg": _jpg_bytes(), "jpg/100001.jpg": _jpg_bytes()})
    _tgz(m / "jpg2.tar.gz", {"jpg/100100.jpg": _jpg_bytes(), "jpg/100101.jpg": _jpg_bytes()})
    out = download_dataset("holidays", tmp_path / "data", mirror=str(m), progress=False)
    ds = load_dataset("holidays", data=out)
    assert [q.name for q in ds.queries] == ["100000", "100100"]


def test_mirror_url():
    assert mirror_url("https://a.b/c/d/file.tgz", None) == "https://a.b/c/d/file.tgz"
    assert mirror_url("https://a.b/c/d/file.tgz", "http://m.x/data/") == "http://m.x/data/file.tgz"
    assert mirror_url("ftp://a.b/x/jpg1.tar.gz", "http://m.x") == "http://m.x/jpg1.tar.gz"


def test_unknown_dataset():
    with pytest.raises(DownloadError, match="roxford5k"):
        download_dataset("nosuch", Path("/nonexistent-never-created"))


# ---------------------------------------------------------------------------- failures


def test_404_names_url_and_leaves_nothing(server, tmp_path):
    url, root, _ = server
    _served(root)  # empty mirror
    with pytest.raises(DownloadError) as e:
        download_dataset("roxford5k", tmp_path / "data", mirror=url, progress=False)
    msg = str(e.value)
    assert f"{url}oxbuild_images-v1.tgz" in msg and "404" in msg
    assert _all_files(tmp_path / "data") == []


def test_checksum_mismatch_discards_file(server, tmp_path):
    url, root, _ = server
    m = _served(root)
    _tgz(m / "oxbuild_images-v1.tgz", {"a.jpg": _jpg_bytes()})
    (m / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"not": "official"}))
    with pytest.raises(DownloadError, match="checksum"):
        download_dataset("roxford5k", tmp_path / "data", mirror=url, progress=False)
    assert not (tmp_path / "data" / "roxford5k" / "gnd_roxford5k.pkl").exists()
    assert not list((tmp_path / "data").rglob("*.part"))


def test_truncated_download_leaves_no_file(server, tmp_path):
    url, _, _ = server
    target = tmp_path / "dl" / "truncated.tgz"
    with pytest.raises(DownloadError, match="truncated.tgz"):
        dl.fetch(url + "truncated.tgz", target, progress=False)
    assert _all_files(tmp_path / "dl") == []


@pytest.mark.parametrize(
    "bad",
    ["../evil.jpg", "/tmp/instar-evil-abs.jpg", "jpg/../../evil.jpg"],
)
def test_path_traversal_tar_rejected(server, tmp_path, bad):
    url, root, _ = server
    m = _served(root)
    _tgz(m / "jpg1.tar.gz", {"jpg/100000.jpg": _jpg_bytes(), bad: _jpg_bytes()})
    _tgz(m / "jpg2.tar.gz", {"jpg/100100.jpg": _jpg_bytes()})
    with pytest.raises(UnsafeArchiveError) as e:
        download_dataset("holidays", tmp_path / "data", mirror=url, progress=False)
    assert bad in str(e.value)
    out = tmp_path / "data" / "holidays"
    assert not (out / "jpg").exists() and not list(out.glob(".extracted-*")) and not list(out.glob(".extracting-*"))
    assert not list(tmp_path.rglob("evil.jpg")) and not Path("/tmp/instar-evil-abs.jpg").exists()


def test_links_and_zip_traversal_rejected(tmp_path):
    arch = tmp_path / "link.tgz"
    with tarfile.open(arch, "w:gz") as tf:
        info = tarfile.TarInfo("jpg/x.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        extract_archive(arch, tmp_path / "out1")
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("full/ukbench00000.jpg", b"x")
        zf.writestr("../../ukbench00001.jpg", b"x")
    with pytest.raises(UnsafeArchiveError, match=r"\.\."):
        extract_archive(z, tmp_path / "out2")
    assert not (tmp_path.parent / "ukbench00001.jpg").exists()
