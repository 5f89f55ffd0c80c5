"""The search service's API over HTTP, against a real `instar serve` process on 127.0.0.1 (tests/serving.py):
every bad input gets a clear 4xx JSON error, the token guards the routes that change the index, adding and
deleting work while searches go on, and a search never sees a half-added batch."""
import hashlib
import io
import threading

import httpx
import pytest
from PIL import Image, ImageOps

from serving import png_declaring


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def variants(photos, n: int) -> list[bytes]:
    """n new photographs for adding: mirrored and cropped versions of the test photos (none in the index)."""
    sources = sorted(p for p in photos.rglob("*.jpg"))
    out = []
    for i in range(n):
        im = Image.open(sources[i % len(sources)]).convert("RGB")
        w, h = im.size
        im = ImageOps.mirror(im).crop((i % 3, i % 5, w - (i % 7), h))
        out.append(jpeg(im))
    return out


def search(client, data: bytes = None, name="q.jpg", **fields):
    files = {"image": (name, data, "image/jpeg")} if data is not None else None
    return client.post("/search", files=files, data={k: str(v) for k, v in fields.items()})


def assert_error(r: httpx.Response, status: int, error_part: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str) and body["detail"], body
    assert error_part in body["error"] + str(body["detail"]), body
    return body


@pytest.fixture(scope="module")
def client(served):
    with served.client() as c:
        yield c


def test_health_stats_and_openapi(served, client):
    assert client.get("/health").json() == {"status": "ok", "images": 8}
    stats = client.get("/stats").json()
    assert stats["images"] == 8 and stats["rows"] == 8 and stats["removed"] == 0 and stats["dim"] == 8 * 128
    assert stats["preset"]["name"] == "rootsift-vlad"
    assert stats["preset"]["sections"]["pooling"] == {"method": "vlad", "k": 8, "power": 0.5, "intra": True,
                                                      "niter": 20, "seed": 0}
    (col,) = stats["bytes"]["columns"]
    assert col["name"] == "global" and col["committed_bytes"] == col["bytes_on_disk"] == 8 * 1024 * 4
    assert stats["bytes"]["total"] >= col["bytes_on_disk"] + stats["bytes"]["database"] + stats["bytes"]["model"]
    model = stats["model"]
    assert model["weights"] is None and model["learned"] == ["pooling"] and model["trained_on"] == "8 images"
    assert stats["limits"]["max_upload_bytes"] == 1024 * 1024 and stats["limits"]["max_pixels"] == 4_000_000
    assert stats["limits"]["max_k"] == 50 and stats["token_required"] and stats["folders_allowed"]
    assert stats["search_choices"]["rerank"] == ["none"]  # CA-SR needs stored regions, which this index lacks
    schema = client.get("/openapi.json").json()
    assert {"/search", "/images", "/images/{id}", "/images/{id}/thumbnail", "/health", "/stats"} <= set(schema["paths"])
    form = schema["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    props = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert {"image", "box", "k", "filter", "rerank", "expansion", "set"} <= set(props)
    assert {"SearchResponse", "SearchHit", "ErrorResponse", "AddResponse", "StatsResponse"} <= set(schema["components"]["schemas"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_search_returns_hits_with_boxes_and_serves_images(served, client, photos):
    data = (photos / "coffee.jpg").read_bytes()
    w, h = Image.open(photos / "coffee.jpg").size
    r = search(client, data, name="coffee.jpg", box=f"{w * 0.2:.0f},{h * 0.25:.0f},{w * 0.7:.0f},{h * 0.8:.0f}", k=5,
               expansion="none")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == {"filename": "coffee.jpg", "width": w, "height": h,
                             "box": [round(w * 0.2), round(h * 0.25), round(w * 0.7), round(h * 0.8)]}
    assert body["settings"]["expansion"] == {"method": "none"} and body["took_ms"] > 0 and body["k"] == 5
    hits = body["hits"]
    assert [x["rank"] for x in hits] == [1, 2, 3, 4, 5] and hits[0]["name"] == "coffee.jpg"
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    top = hits[0]
    assert top["box"] == [0, 0, top["width"], top["height"]]  # a global preset's box is the whole image
    image = client.get(top["image_url"])
    assert image.status_code == 200 and image.content == data and image.headers["content-type"] == "image/jpeg"
    thumb = client.get(top["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (256, round(256 * h / w))
    small = client.get(top["thumbnail_url"], params={"size": 64})
    assert max(Image.open(io.BytesIO(small.content)).size) == 64
    # no box and no k: the preset's k (100), capped by the server's --max-k 50, and only 8 images to return
    r = search(client, data)
    assert r.status_code == 200 and r.json()["k"] == 50 and len(r.json()["hits"]) == 8
    assert r.json()["query"]["box"] is None
    assert list(served.tmp.iterdir()) == [], "uploaded query files must be deleted after the search"


@pytest.mark.parametrize("case, fields, status, error", [
    ("not an image", {"data": b"GIF89a but not really"}, 422, "bad image"),
    ("empty file", {"data": b""}, 422, "bad image"),
    ("truncated JPEG", {"truncate": 0.4}, 422, "unusable image"),
    ("pixel limit (4 MP)", {"data": png_declaring(3000, 2000)}, 413, "3000x2000 pixels"),
    ("decompression bomb", {"data": png_declaring(40000, 40000)}, 413, "40000x40000 pixels"),
    ("body over 1 MiB", {"data": b"\xff\xd8" + b"x" * (1024 * 1024 + 10)}, 413, "upload too large"),
    ("box: 3 numbers", {"box": "1,2,3"}, 422, "bad box"),
    ("box: words", {"box": "left,top,right,bottom"}, 422, "bad box"),
    ("box: not finite", {"box": "0,0,nan,50"}, 422, "bad box"),
    ("box: empty", {"box": "50,50,50,80"}, 422, "bad box"),
    ("box: outside", {"box": "900,900,1000,1000"}, 422, "outside"),
    ("box: too small", {"box": "0,0,10,10"}, 422, "too small"),
    ("k = 0", {"k": "0"}, 422, "invalid k"),
    ("k negative", {"k": "-3"}, 422, "invalid k"),
    ("k not a number", {"k": "ten"}, 422, "invalid k"),
    ("k above --max-k", {"k": "51"}, 422, "invalid k"),
    ("unknown expansion", {"expansion": "magic"}, 422, "bad search setting"),
    ("re-ranker needing regions", {"rerank": "ca-sr"}, 422, "region"),
    ("unknown setting key", {"set": "expansion.depth=3"}, 422, "unknown key"),
    ("extraction setting", {"set": "pooling.k=3"}, 422, "only search-time"),
    ("setting without =", {"set": "rerank.top"}, 422, "SECTION.KEY=VALUE"),
    ("unknown field", {"topk": "5"}, 422, "unknown field"),
    ("no image", {"data": None}, 422, "invalid image"),
])
def test_bad_search_requests_get_clear_4xx_json_errors(served, client, photos, case, fields, status, error):
    fields = dict(fields)
    data = (photos / "coffee.jpg").read_bytes()
    if "truncate" in fields:
        data = data[:int(len(data) * fields.pop("truncate"))]
    data = fields.pop("data", data)
    assert_error(search(client, data, **fields), status, error)
    assert client.get("/health").status_code == 200
    assert list(served.tmp.iterdir()) == [], "a refused query's upload must be deleted too"


def test_unknown_ids_and_paths_are_404_never_a_file(client):
    n = client.get("/health").json()["images"]
    for path in (f"/images/{n + 100}", "/images/-1", f"/images/{n + 100}/thumbnail", "/images/99999999999999999999999",
                 "/images/..%2F..%2Fetc%2Fpasswd", "/images/..%2Findex.sqlite", "/static/..%2F..%2Fpyproject.toml",
                 "/static/../../pyproject.toml", "/nowhere"):
        r = client.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert_error(r, r.status_code)
    assert_error(client.get("/images/abc"), 422, "invalid id")
    assert_error(client.get("/images/0/thumbnail", params={"size": 0}), 422, "invalid size")
    assert_error(client.put("/images/0"), 405, "method not allowed")


def test_changes_need_the_bearer_token(served, client, photos):
    upload = {"files": ("x.jpg", variants(photos, 1)[0], "image/jpeg")}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdC10b2tlbg=="},
                    {"Authorization": "test-token"}):
        r = client.post("/images", files=upload, headers=headers)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(client.delete("/images/0", headers=headers), 401, "unauthorized")
        assert_error(client.post("/images", data={"folder": str(served.allowed)}, headers=headers), 401)
    assert client.get("/health").json()["images"] == 8
    assert not (served.index / "uploads").exists() or not any((served.index / "uploads").iterdir())


def test_add_uploads_search_them_then_delete(served, client, photos):
    new = variants(photos, 2)
    files = [("files", ("mirror-a.jpg", new[0], "image/jpeg")), ("files", ("mirror-b.jpg", new[1], "image/jpeg")),
             ("files", ("again-a.jpg", new[0], "image/jpeg")), ("files", ("notes.txt", b"hello", "text/plain")),
             ("files", ("../../evil.jpg", png_declaring(5000, 5000), "image/png")),
             ("files", ("tiny.png", jpeg(Image.new("RGB", (12, 12), "red")), "image/png"))]
    r = client.post("/images", files=files, headers=served.auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["updated"], body["unchanged"], body["failed"], body["images"]) == (2, 0, 1, 3, 10)
    a, b, again, txt, evil, tiny = body["files"]
    assert a["status"] == b["status"] == "added" and again["status"] == "unchanged" and again["id"] == a["id"]
    assert a["name"] == hashlib.sha256(new[0]).hexdigest() + ".jpg"   # a generated name, never the client's
    assert txt["status"] == evil["status"] == tiny["status"] == "failed"
    assert "not an image" in txt["error"] and "5000x5000" in evil["error"] and "too small" in tiny["error"]
    stored = sorted(p.name for p in (served.index / "uploads").iterdir())
    assert stored == sorted([a["name"], b["name"]])     # refused files are not kept, nothing escaped the folder
    assert not any(p.name == "evil.jpg" for p in served.index.parent.rglob("*"))
    # the added photo is found by itself, and served back byte for byte
    hits = search(client, new[1], k=3).json()["hits"]
    assert hits[0]["id"] == b["id"] and hits[0]["name"] == b["name"]
    assert client.get(f"/images/{b['id']}").content == new[1]
    # deleting: the row is tombstoned, the uploaded file goes with it, search no longer returns it
    for item in (a, b):
        r = client.delete(f"/images/{item['id']}", headers=served.auth())
        assert r.status_code == 200 and r.json()["removed"] and r.json()["name"] == item["name"], r.text
    assert r.json()["images"] == 8
    assert_error(client.delete(f"/images/{a['id']}", headers=served.auth()), 404, "removed")
    assert_error(client.get(f"/images/{b['id']}"), 404, "removed")
    assert_error(client.get(f"/images/{b['id']}/thumbnail"), 404, "removed")
    assert b["id"] not in [x["id"] for x in search(client, new[1], k=50).json()["hits"]]
    assert list((served.index / "uploads").iterdir()) == []
    stats = client.get("/stats").json()
    assert (stats["images"], stats["removed"], stats["rows"]) == (8, 2, 10)


def test_folders_only_inside_allowed_roots(served, client, photos, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(variants(photos, 1)[0])
    inside = served.allowed / "batch"
    inside.mkdir()
    (inside / "new.jpg").write_bytes(variants(photos, 3)[2])
    (inside / "leak.jpg").symlink_to(outside / "secret.jpg")
    (served.allowed / "door").symlink_to(outside)
    for folder, status, error in ((str(outside), 403, "outside"), (str(served.allowed / "door"), 403, "outside"),
                                  (str(served.allowed / ".." / "outside"), 403, "outside"), ("/", 403, "outside"),
                                  (str(served.allowed / "missing"), 404, "no such folder"),
                                  ("relative/path", 403, "outside")):
        assert_error(client.post("/images", data={"folder": folder}, headers=served.auth()), status, error)
    assert_error(client.post("/images", data={"folder": str(inside)}, headers=served.auth(),
                             files={"files": ("a.jpg", b"x", "image/jpeg")}), 422, "not both")
    assert_error(client.post("/images", data={}, headers=served.auth(), files={"other": ("a", b"x")}), 422)
    r = client.post("/images", data={"folder": str(inside)}, headers=served.auth())
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["failed"], body["images"]) == (1, 1, 9)
    assert body["files"][0]["filename"].endswith("leak.jpg") and "outside the allowed" in body["files"][0]["error"]
    hit = search(client, (inside / "new.jpg").read_bytes(), k=1).json()["hits"][0]
    assert hit["name"] == "new.jpg"
    assert client.delete(f"/images/{hit['id']}", headers=served.auth()).json()["images"] == 8
    assert (inside / "new.jpg").exists()   # a folder's files are the owner's: deleting only drops the row


def test_searches_never_see_a_half_added_batch(served, client, photos):
    """One POST /images of 6 photos commits them in one transaction: searches running meanwhile see 8 images
    or 14, never a count in between, and every id they return resolves."""
    query = (photos / "coffee.jpg").read_bytes()
    new = variants(photos, 6)
    result = {}

    def add():
        with served.client() as c:
            result["add"] = c.post("/images", headers=served.auth(),
                                   files=[("files", (f"n{i}.jpg", d, "image/jpeg")) for i, d in enumerate(new)])

    def count() -> int:
        r = search(client, query, k=50, expansion="none")
        assert r.status_code == 200, r.text
        assert client.get(r.json()["hits"][-1]["thumbnail_url"]).status_code == 200
        return len(r.json()["hits"])

    during = []
    adder = threading.Thread(target=add)
    adder.start()
    try:
        while adder.is_alive() or len(during) < 3:
            during.append(count())   # a search that began before the commit may end after it: it sees 8
        adder.join()
        assert result["add"].status_code == 200 and result["add"].json()["added"] == 6, result["add"].text
        assert set(during) <= {8, 14}, during
        assert count() == 14   # begun after the add answered: the whole batch
    finally:
        adder.join()
        added = result["add"].json().get("files", []) if "add" in result and result["add"].status_code == 200 else []
        for f in added:   # leave the served index as the other tests expect it, whatever failed above
            assert client.delete(f"/images/{f['id']}", headers=served.auth()).status_code == 200
    assert client.get("/health").json()["images"] == 8


def test_a_write_while_another_process_writes_is_409(served, client, photos):
    from instar.index import DATABASE
    from instar.store import Store, connect
    db = connect(served.index / DATABASE)
    try:
        with Store(served.index, db).writer():   # this process holds the index's writer lock, as `instar index` would
            r = client.post("/images", headers=served.auth(), files={"files": ("a.jpg", variants(photos, 1)[0], "image/jpeg")})
            assert_error(r, 409, "index busy")
            assert_error(client.delete("/images/0", headers=served.auth()), 409, "index busy")
            assert search(client, (photos / "coffee.jpg").read_bytes(), k=3).status_code == 200  # reading goes on
    finally:
        db.close()
    assert client.get("/health").json()["images"] == 8
    assert list((served.index / "uploads").iterdir()) == []
