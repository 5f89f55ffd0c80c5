"""The service against a browser on the same machine and against odd input (issue 16), with a real `instar
serve` on 127.0.0.1 (tests/serving.py), a real headless Chromium and real files: a page of another origin
cannot write, Host must be the server's, a swapped file is not served, long / NUL / non-UTF-8 names get JSON
4xx, the token is checked before the body is read, orphan uploads of a killed add are removed, the schema says
what the routes accept, and /docs works offline."""
import http.server
import os
import re
import shutil
import signal
import socket
import threading
import time

import httpx
import pytest

from instar import Index
from serving import FAST, build_index, start_server
from test_server_api import assert_error, search, variants
from test_web_browser import wait


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, photos):
    """A server WITHOUT a token (the case the cross-site attack needs), a folder it may add from holding two new
    photos, over a copy of the photos (so files can be swapped under it)."""
    work = tmp_path_factory.mktemp("open-served")
    collection = work / "collection"
    shutil.copytree(photos, collection)
    index = build_index(work / "open.index", collection, "rootsift-vlad", FAST)
    allowed = work / "allowed"
    (allowed / "new").mkdir(parents=True)
    for i, data in enumerate(variants(photos, 2)):
        (allowed / "new" / f"v{i}.jpg").write_bytes(data)
    server = start_server(index, work, extra=["--allow-folder", str(allowed)])
    server.allowed = allowed
    server.collection = collection
    yield server
    server.stop()


@pytest.fixture(scope="module")
def other_origin(tmp_path_factory):
    """A second web server on another port of 127.0.0.1: the attacker's page."""
    root = tmp_path_factory.mktemp("other-origin")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def images(server) -> int:
    return httpx.get(server.url + "/health").json()["images"]


def test_a_page_of_another_origin_cannot_add_images(browser, open_server, other_origin):
    root, origin = other_origin
    target = open_server.url + "/images"
    folder = str(open_server.allowed / "new")
    (root / "attack.html").write_text(f"""<!doctype html><title>loading</title>
<form id="form" method="POST" action="{target}" enctype="multipart/form-data">
<input name="folder" value="{folder}"></form>
<script>
const body = new FormData(); body.append("folder", "{folder}");
fetch("{target}", {{method: "POST", body, mode: "no-cors"}})
  .then(() => {{ document.title = "fetched"; }}, () => {{ document.title = "fetch failed"; }});
</script>""")
    before = images(open_server)
    browser.get(f"{origin}/attack.html")
    wait(browser, lambda d: d.title in ("fetched", "fetch failed"))
    time.sleep(0.5)
    assert images(open_server) == before, "a page of another origin added images with fetch"
    browser.execute_script("document.getElementById('form').submit()")
    wait(browser, lambda d: d.current_url.startswith(open_server.url))
    text = wait(browser, lambda d: d.find_element("tag name", "body").text)
    assert "cross-origin request refused" in text, text
    assert images(open_server) == before, "a page of another origin added images with a form"
    # the same write from a client that sends no Origin (curl, httpx) or the server's own origin works
    r = httpx.post(target, data={"folder": folder}, headers={"Origin": open_server.url}, timeout=60)
    assert r.status_code == 200 and r.json()["added"] == 2, r.text
    for f in Index.open(open_server.index).records():
        if f.name.startswith("v") and f.path.startswith(folder):
            r = httpx.delete(f"{open_server.url}/images/{f.row}", timeout=60)
            assert r.status_code == 200, r.text
    assert images(open_server) == before


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Referer": "http://127.0.0.1:1/page.html"}])
def test_writes_from_another_origin_are_403(open_server, headers):
    before = images(open_server)
    r = httpx.post(open_server.url + "/images", data={"folder": str(open_server.allowed / "new")}, headers=headers)
    assert_error(r, 403, "cross-origin")
    assert_error(httpx.delete(open_server.url + "/images/0", headers=headers), 403, "cross-origin")
    assert images(open_server) == before


def test_host_must_be_the_servers(open_server, photos):
    for host in ("attacker.example", "attacker.example:80", "127.0.0.2"):
        assert_error(httpx.get(open_server.url + "/health", headers={"Host": host}), 400, "host not allowed")
        assert_error(httpx.get(open_server.url + "/stats", headers={"Host": host}), 400, "host not allowed")
    assert httpx.get(open_server.url + "/health", headers={"Host": "localhost"}).status_code == 200
    with httpx.Client(base_url=open_server.url, headers={"Origin": open_server.url}) as c:
        assert search(c, (photos / "coffee.jpg").read_bytes(), k=2).status_code == 200   # the page's own origin


def test_allowed_host_lets_another_name_in(tmp_path, photos):
    index = build_index(tmp_path / "h.index", photos, "rootsift-vlad", FAST)
    server = start_server(index, tmp_path, extra=["--allowed-host", "photos.lan"])
    try:
        assert httpx.get(server.url + "/health", headers={"Host": "photos.lan:8000"}).status_code == 200
        assert_error(httpx.get(server.url + "/health", headers={"Host": "other.lan"}), 400, "host not allowed")
    finally:
        server.stop()


def test_a_file_swapped_for_a_symlink_is_not_served(open_server, tmp_path):
    with Index.open(open_server.index) as idx:
        rec = next(r for r in idx.records() if r.name == "chelsea.jpg")
    url = f"{open_server.url}/images/{rec.row}"
    assert httpx.get(url).status_code == 200 and httpx.get(url + "/thumbnail?size=32").status_code == 200
    secret = tmp_path / "secret.txt"
    secret.write_text("the server's secrets")
    photo = open_server.collection / "chelsea.jpg"
    original = photo.read_bytes()
    photo.unlink()
    photo.symlink_to(secret)
    try:
        for path in ("", "/thumbnail", "/thumbnail?size=64"):
            r = httpx.get(url + path)
            assert_error(r, 404, "no longer the one that was indexed")
            assert "secrets" not in r.text
        photo.unlink()
        photo.write_text("not an image at all")   # a regular file, but not an image any more
        assert_error(httpx.get(url), 404, "not an image")
        photo.unlink()
        os.mkfifo(photo)                          # not a regular file: refused without blocking on it
        assert_error(httpx.get(url, timeout=10), 404, "no longer a regular file")
    finally:
        photo.unlink()
        photo.write_bytes(original)
    assert httpx.get(url).content == original


def multipart(fields: list[tuple[bytes, bytes | None, bytes]]) -> tuple[bytes, str]:
    """A multipart body from raw bytes (name, filename or None, value): names that are not UTF-8 included."""
    boundary = b"----instar-test-boundary"
    out = b""
    for name, filename, value in fields:
        out += b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name + b"\""
        if filename is not None:
            out += b"; filename=\"" + filename + b"\"\r\nContent-Type: image/jpeg"
        out += b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n", "multipart/form-data; boundary=" + boundary.decode()


def test_every_route_answers_odd_names_with_json_4xx(open_server, photos):
    allowed = str(open_server.allowed)
    jpeg = (photos / "coffee.jpg").read_bytes()
    odd = {"300-byte part": allowed + "/" + "a" * 300, "4097+ bytes": allowed + "/b" * 2100,
           "NUL": allowed + "/x\0y", "dot-dot": allowed + "/../../etc"}
    before = images(open_server)
    with httpx.Client(base_url=open_server.url, timeout=60) as c:
        for case, folder in odd.items():
            r = c.post("/images", data={"folder": folder})
            assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
            assert_error(r, r.status_code)
        raw = [b"folder=" + allowed.encode() + b"/\xff\xfe", b"folder=" + b"%ff" * 10]
        for body in raw:
            r = c.post("/images", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        names = [b"q" * 300 + b".jpg", b"q\0.jpg", b"\xff\xfe.jpg", b"x/" * 2100 + b"q.jpg"]
        for name in names:
            for route, field in (("/search", b"image"), ("/images", b"files")):
                body, ctype = multipart([(field, name, jpeg)])
                r = c.post(route, content=body, headers={"Content-Type": ctype})
                assert r.status_code < 500, (route, name[:20], r.status_code, r.text)
                if r.status_code != 200:   # a name the multipart parser refuses (NUL)
                    assert_error(r, 400, "multipart")
                elif route == "/images":   # the client's name is only a label: the file is stored by its hash
                    assert r.json()["added"] + r.json()["unchanged"] == 1, r.text
                    for f in r.json()["files"]:
                        if f["status"] == "added":
                            assert c.delete(f"/images/{f['id']}").status_code == 200
            for field in (b"box", b"set", b"k", b"expansion", b"folder", b"\xff\xfe", b"n\0"):
                body, ctype = multipart([(b"image", b"q.jpg", jpeg), (field, None, name)])
                r = c.post("/search", content=body, headers={"Content-Type": ctype})
                assert 400 <= r.status_code < 500, (field, name[:20], r.status_code, r.text)
                assert_error(r, r.status_code)
        for path in ("/images/" + "9" * 300, "/images/%00", "/images/%ff%fe", "/images/1%00/thumbnail",
                     "/images/" + "a" * 5000, "/static/" + "a" * 300, "/static/%ff", "/static/a%00b"):
            for method in ("GET", "DELETE"):
                r = c.request(method, path)
                assert 400 <= r.status_code < 500, (method, path[:30], r.status_code, r.text)
                assert_error(r, r.status_code)
    assert images(open_server) == before


def test_the_token_is_checked_before_the_body_is_read(served):
    """A POST /images without the token declaring a 900 kB body (under the 1 MiB limit): the 401 comes back
    while the client has sent only the headers (the server does not wait for the body)."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /images HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
                  f"boundary=xyz\r\nContent-Length: {900_000}\r\n\r\n".encode())
        s.settimeout(10)   # before the change the server waited for the body: this read timed out
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 401") and "www-authenticate: bearer" in head.lower(), head
    assert '"unauthorized"' in body, body


def test_options_says_every_method_and_schema_says_what_routes_take(open_server):
    r = httpx.options(open_server.url + "/images/0")
    assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "DELETE"}
    schema = httpx.get(open_server.url + "/openapi.json").json()

    def form(path):
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]

    folder = form("/images")["folder"]
    assert any(s.get("minLength") == 1 for s in folder.get("anyOf", [folder])), folder
    sets = form("/search")["set"]
    assert sets["type"] == "array" and "anyOf" not in sets, sets     # a list of strings, never null
    assert_error(httpx.post(open_server.url + "/images", data={"folder": ""}), 422, "folder")


def test_docs_work_offline(open_server):
    page = httpx.get(open_server.url + "/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert not re.search(r"https?://", page.text), re.findall(r"https?://\S+", page.text)
    for u in urls:
        assert httpx.get(open_server.url + u).status_code == 200, u


@pytest.mark.slow
def test_orphan_uploads_of_a_killed_add_are_removed(tmp_path, photos):
    """kill -9 of the server while it describes 30 uploads: their files are in uploads/ but not all rows are
    committed; the next start removes the files no committed row owns."""
    index = build_index(tmp_path / "k.index", photos, "rootsift-vlad", FAST)
    server = start_server(index, tmp_path)
    uploads = index / "uploads"
    new = variants(photos, 30)

    def add():
        try:
            httpx.post(server.url + "/images", files=[("files", (f"n{i}.jpg", d, "image/jpeg")) for i, d in enumerate(new)],
                       timeout=120)
        except httpx.TransportError:
            pass   # the server is killed while it answers: no response is expected

    thread = threading.Thread(target=add, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if uploads.is_dir() and sum(p.suffix == ".jpg" for p in uploads.iterdir()) == len(set(new)):
                break
            time.sleep(0.005)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
    finally:
        server.stop()
    thread.join(10)
    with Index.open(index) as idx:
        owned = {r.path for r in idx.records()}
    orphans = [p for p in uploads.iterdir() if str(p) not in owned]
    assert orphans, "the kill came after the commit: no orphan to recover"
    server = start_server(index, tmp_path)
    try:
        with Index.open(index) as idx:
            owned = {r.path for r in idx.records()}
        left = sorted(str(p) for p in uploads.iterdir())
        assert left == sorted(p for p in owned if p.startswith(str(uploads))), (len(left), len(owned))
        assert images(server) == 8 + len(left)
    finally:
        server.stop()
