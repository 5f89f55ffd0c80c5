"""`instar serve NAME.shards.json`: a real server on 127.0.0.1 over a manifest of 3 shards answers like one over an
index: health, stats, the web page, searches equal to the in-process search of the manifest; an upload is stored
by the shard owning its name, a delete removes it from the shard holding it, and every other image keeps its id."""
import hashlib

import numpy as np
import pytest

from instar import ShardedIndex, list_images, open_index, search as local_search
from instar.index.shards import create_shards, shard_of

from serving import start_server
from test_server_api import assert_error, search, variants


@pytest.fixture(scope="module")
def sharded_server(tmp_path_factory, photos, request):
    from instar.presets import load_preset
    from serving import FAST
    work = tmp_path_factory.mktemp("served-shards")
    files = list_images(photos)
    manifest = create_shards(work / "photos.shards.json", load_preset("rootsift-vlad").with_overrides(FAST), files, 3)
    with ShardedIndex.open(manifest.path) as idx:
        assert not idx.add(files, root=photos).failed
    server = start_server(manifest.path, work, token="t0k")
    yield server
    server.stop()


def hits_by_name(client, data: bytes, k: int = 8) -> dict:
    r = search(client, data, k=k)
    assert r.status_code == 200, r.text
    return {h["name"]: h for h in r.json()["hits"]}


def test_serve_manifest_searches_adds_and_deletes(sharded_server, photos):
    server, manifest = sharded_server, sharded_server.index
    files = list_images(photos)
    with server.client() as client:
        assert client.get("/health").json() == {"status": "ok", "images": 8}
        stats = client.get("/stats").json()
        assert stats["images"] == stats["rows"] == 8 and stats["preset"]["name"] == "rootsift-vlad"
        assert stats["bytes"]["columns"][0]["bytes_on_disk"] > 0 and stats["bytes"]["model"] > 0
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        # searches equal the in-process search of the manifest (names, ids, scores)
        query = files[1].read_bytes()
        served = hits_by_name(client, query)
        with open_index(manifest) as idx:
            local = local_search(idx, files[1], k=8)
        assert list(served) == [h.name for h in local]
        assert [served[h.name]["id"] for h in local] == [h.id for h in local]
        assert np.allclose([served[h.name]["score"] for h in local], [h.score for h in local], atol=1e-5)
        ids_before = {name: h["id"] for name, h in served.items()}
        assert client.get(f"/images/{local[0].id}").content == files[1].read_bytes()
        assert client.get(f"/images/{local[0].id}/thumbnail").status_code == 200
        # adds go to the shard owning the upload's stored name; nobody else's id moves
        new = variants(photos, 4)
        r = client.post("/images", files=[("files", (f"v{i}.jpg", b, "image/jpeg")) for i, b in enumerate(new)],
                        headers=server.auth())
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["added"], body["failed"], body["images"]) == (4, 0, 12)
        uploads = manifest.with_name("photos.shards") / "uploads"
        with open_index(manifest) as idx:
            for item, data in zip(body["files"], new):
                assert item["status"] == "added" and item["name"] == hashlib.sha256(data).hexdigest() + ".jpg"
                owner = shard_of(item["name"], 3)
                assert item["id"] % 3 == owner
                assert idx.shards[owner].live_record(str(uploads / item["name"])) is not None
                assert client.get(f"/images/{item['id']}").content == data
        assert sorted(p.name for p in uploads.iterdir()) == sorted(item["name"] for item in body["files"])
        after = hits_by_name(client, query, k=12)
        assert {name: after[name]["id"] for name in ids_before} == ids_before
        found = hits_by_name(client, new[2], k=1)
        assert list(found) == [body["files"][2]["name"]] and found[body["files"][2]["name"]]["id"] == body["files"][2]["id"]
        # a delete removes the image from the shard holding it, its uploaded file with it
        gone = body["files"][2]
        r = client.delete(f"/images/{gone['id']}", headers=server.auth())
        assert r.status_code == 200 and r.json()["id"] == gone["id"] and r.json()["images"] == 11, r.text
        assert not (uploads / gone["name"]).exists()
        assert_error(client.get(f"/images/{gone['id']}"), 404, "removed")
        assert_error(client.delete(f"/images/{gone['id']}", headers=server.auth()), 404)
        assert_error(client.delete("/images/999999", headers=server.auth()), 404, "unknown id")
        assert_error(client.delete(f"/images/{body['files'][0]['id']}"), 401)
        assert client.get("/health").json()["images"] == 11
        again = hits_by_name(client, query, k=12)
        assert {name: again[name]["id"] for name in ids_before} == ids_before and gone["name"] not in again
