"""Loaders of UKBench, INRIA Holidays, any folder with a queries.json, and SMVS DVD covers."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...extract.images import IMAGE_EXTENSIONS, list_images

from .checks import box_value, check_present, images_by_number, require_dir
from .types import SMVS_BOXES, Dataset, DatasetError, MissingImagesError, Query


_UKBENCH_RE = re.compile(r"ukbench(\d{5})", re.IGNORECASE)


def load_ukbench(images_dir: Path | str, name: str = "ukbench") -> Dataset:
    """UKBench: ``ukbench00000.jpg`` ... ``ukbench10199.jpg`` (searched recursively).

    Group = number // 4. Every image is a query and stays in the database (``db_index``
    set), so it is normally its own first result. Metrics: the N-S score (images of the
    query's group among the top 4, max 4) and mAP with the group's images - the query
    included - as positives. Images whose name is not ``ukbenchNNNNN`` are an error.
    Incomplete groups are accepted (then the best N-S score is below 4).
    """
    images_dir = require_dir(images_dir, "image folder")
    by_num = images_by_number(images_dir, _UKBENCH_RE, "UKBench image name (expected ukbenchNNNNN.jpg with 5 digits)",
                               "; point to the folder of full-size images (e.g. full/)")
    if not by_num:
        raise MissingImagesError(f"{images_dir}: no UKBench images (ukbenchNNNNN.jpg) below this folder")
    nums = sorted(by_num)
    groups = np.array([k // 4 for k in nums], dtype=np.int64)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(int(g), []).append(i)
    queries = [Query(name=by_num[k].stem, image=by_num[k], box=None, db_index=i) for i, k in enumerate(nums)]
    ground_truth = [{"ok": np.array(members[int(g)], dtype=np.int64), "junk": np.empty(0, np.int64)} for g in groups]
    return Dataset(
        name=name,
        kind="ukbench",
        root=images_dir,
        database=[by_num[k] for k in nums],
        queries=queries,
        ground_truth=ground_truth,
        groups=groups,
    )


_HOLIDAYS_RE = re.compile(r"(\d{6})")


def load_holidays(images_dir: Path | str, name: str = "holidays") -> Dataset:
    """INRIA Holidays: ``100000.jpg``, ``100001.jpg``, ... (searched recursively).

    Group = number // 100; the group's query is its image with number % 100 == 0. Every
    image (queries included) is in the database; a query's own image is removed from its
    ranking before the AP is computed (treated as junk), as in the Holidays evaluation
    script. Positives = the other images of the group. Metric: mAP (and mP@k).
    """
    images_dir = require_dir(images_dir, "image folder")
    by_num = images_by_number(images_dir, _HOLIDAYS_RE, "Holidays image name (expected six digits, e.g. 100000.jpg)")
    if not by_num:
        raise MissingImagesError(f"{images_dir}: no Holidays images (NNNNNN.jpg) below this folder")
    nums = sorted(by_num)
    index = {k: i for i, k in enumerate(nums)}
    groups = np.array([k // 100 for k in nums], dtype=np.int64)
    group_ids = sorted(set(int(g) for g in groups))
    no_query = [g for g in group_ids if g * 100 not in index]
    if no_query:
        raise MissingImagesError(
            f"{images_dir}: {len(no_query)} of the {len(group_ids)} groups have no query image; "
            f"first missing: {no_query[0] * 100:06d}.jpg"
        )
    queries, ground_truth = [], []
    for g in group_ids:
        qi = index[g * 100]
        ok = [i for i, gg in enumerate(groups) if gg == g and i != qi]
        queries.append(Query(name=by_num[g * 100].stem, image=by_num[g * 100], box=None, db_index=qi))
        ground_truth.append({"ok": np.array(ok, dtype=np.int64), "junk": np.array([qi], dtype=np.int64)})
    return Dataset(
        name=name,
        kind="holidays",
        root=images_dir,
        database=[by_num[k] for k in nums],
        queries=queries,
        ground_truth=ground_truth,
        groups=groups,
    )


def load_folder(root: Path | str, name: str | None = None) -> Dataset:
    """A generic folder described by ``root/queries.json``::

        {"database": "images",
         "queries": [{"name": "astronaut", "image": "queries/astronaut.jpg", "box": [10, 20, 200, 240],
                      "positives": ["astronaut_1.jpg", "sub/x.jpg"], "junk": [],
                      "boxes": {"astronaut_1.jpg": [40, 10, 300, 280]}}]}

    ``database``: folder relative to `root`; every image below it (recursively) is the
    database, named by its path relative to that folder with forward slashes. Query
    ``image`` is relative to `root`; ``box`` (x0, y0, x1, y1 pixels) is optional/null;
    ``name`` defaults to the image's stem; ``positives`` and ``junk`` are database names.
    If the query image itself lies in the database it gets ``db_index`` and, unless listed
    as a positive, is ignored in its own ranking (treated as junk). ``boxes`` (optional) says
    where the query's object is in some positives (x0, y0, x1, y1 pixels of that image): the
    evaluator then measures localisation. Metric: mAP and mP@k under a single protocol ``all``.
    """
    root = require_dir(root, "dataset folder")
    spec_path = root / "queries.json"
    if not spec_path.is_file():
        raise DatasetError(f"{spec_path}: not found (a folder dataset needs a queries.json)")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{spec_path}: cannot read it as JSON ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("queries"), list):
        raise DatasetError(f"{spec_path}: expected an object with a 'queries' list (and 'database': a folder)")
    db_rel = spec.get("database", "images")
    if not isinstance(db_rel, str) or not db_rel:
        raise DatasetError(f"{spec_path}: 'database' must be a folder path relative to {root}")
    db_dir = root / db_rel
    if not db_dir.is_dir():
        raise MissingImagesError(f"{db_dir}: database folder named in {spec_path} not found")
    files = list_images(db_dir)
    if not files:
        raise MissingImagesError(f"{db_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) below the database folder")
    names = [p.relative_to(db_dir).as_posix() for p in files]
    index = {n: i for i, n in enumerate(names)}
    resolved = {p.resolve(): i for i, p in enumerate(files)}
    queries, ground_truth, seen, known_boxes = [], [], set(), []
    for qi, q in enumerate(spec["queries"]):
        src = f"{spec_path}: queries[{qi}]"
        if not isinstance(q, dict) or not isinstance(q.get("image"), str):
            raise DatasetError(f"{src}: each query needs an 'image' path relative to {root}")
        img = root / q["image"]
        qname = str(q.get("name") or Path(q["image"]).stem)
        src = f"{spec_path}: query {qname!r}"
        if qname in seen:
            raise DatasetError(f"{src}: two queries have this name")
        seen.add(qname)
        if not img.is_file():
            raise MissingImagesError(f"{src}: query image {img} not found")
        box = box_value(q.get("box"), src)
        lists = {}
        for key in ("positives", "junk"):
            vals = q.get(key) or []
            if not isinstance(vals, list):
                raise DatasetError(f"{src}: '{key}' must be a list of database image names")
            for v in vals:
                if v not in index:
                    raise DatasetError(f"{src}: {key} entry {v!r} is not an image of the database {db_dir}")
            lists[key] = [index[v] for v in vals]
        db_index = resolved.get(img.resolve())
        junk = list(lists["junk"])
        if db_index is not None and db_index not in lists["positives"] and db_index not in junk:
            junk.append(db_index)
        where = q.get("boxes") or {}
        if not isinstance(where, dict):
            raise DatasetError(f"{src}: 'boxes' must map positive names to [x0, y0, x1, y1]")
        for v in where:
            if v not in index or index[v] not in lists["positives"]:
                raise DatasetError(f"{src}: boxes entry {v!r} is not one of the query's positives")
        known_boxes.append({index[v]: box_value(b, f"{src}: boxes[{v!r}]") for v, b in where.items()})
        queries.append(Query(name=qname, image=img, box=box, db_index=db_index))
        ground_truth.append({"ok": np.array(lists["positives"], dtype=np.int64), "junk": np.array(junk, dtype=np.int64)})
    if not queries:
        raise DatasetError(f"{spec_path}: the 'queries' list is empty")
    return Dataset(
        name=name or root.resolve().name,
        kind="folder",
        root=root,
        database=files,
        queries=queries,
        ground_truth=ground_truth,
        positive_boxes=known_boxes if any(known_boxes) else None,
    )


def load_smvs(root: Path | str, *, direction: str = "retrieval", objects: Sequence[str] | None = None,
              boxes: Path | str | None = None, name: str | None = None) -> Dataset:
    """Stanford MVS DVD covers from its ``groups.csv`` (image, object_id, device, width, height), either way round.

    ``direction='retrieval'``: each phone photo is a query, the cover scans (``Reference``) are the database,
    the one positive is its own cover. ``direction='instance'``: each cover scan is a query (the whole scan, no
    box), the phone photos are the database, its positives are the photos of that cover; ``boxes`` (default: the
    packaged ground truth instar's matching wrote) says where the cover is in each photo, for localisation.
    ``objects`` restricts both sides to those object ids (e.g. `SMVS_TEST_OBJECTS`). Protocol ``all``.
    """
    root = require_dir(root, "smvs-dvd-covers folder")
    table = root / "groups.csv"
    if not table.is_file():
        raise DatasetError(f"{table}: not found (the smvs-dvd-covers layout has a groups.csv)")
    import csv
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "object_id", "device"} <= set(rows[0]):
        raise DatasetError(f"{table}: expected columns image, object_id, device")
    keep = set(objects) if objects is not None else None
    rows = [r for r in rows if keep is None or r["object_id"] in keep]
    refs = [r for r in rows if r["device"] == "Reference"]
    photos = [r for r in rows if r["device"] != "Reference"]
    if direction not in ("retrieval", "instance"):
        raise DatasetError(f"direction {direction!r}: expected 'retrieval' or 'instance'")
    db_rows, q_rows = (refs, photos) if direction == "retrieval" else (photos, refs)
    check_present(root, [r["image"] for r in rows], "images")
    by_object: dict[str, list[int]] = {}
    for i, r in enumerate(db_rows):
        by_object.setdefault(r["object_id"], []).append(i)
    where: dict[str, Any] = {}
    if direction == "instance":
        from importlib import resources
        source = Path(boxes) if boxes is not None else resources.files("instar.data").joinpath(SMVS_BOXES)
        try:
            where = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"{source}: cannot read the cover boxes ({e})") from None
    queries, ground_truth, known = [], [], []
    for r in q_rows:
        positives = by_object.get(r["object_id"], [])
        queries.append(Query(name=r["image"].removeprefix("jpg/").rsplit(".", 1)[0], image=root / r["image"], box=None))
        ground_truth.append({"ok": np.array(positives, dtype=np.int64), "junk": np.zeros(0, dtype=np.int64)})
        boxes_here = {}
        for i in positives:
            entry = where.get(db_rows[i]["image"].removeprefix("jpg/"))
            if entry and entry.get("box"):
                boxes_here[i] = box_value(entry["box"], f"cover box of {db_rows[i]['image']}")
        known.append(boxes_here)
    return Dataset(name=name or f"smvs-dvd-covers-{direction}", kind="folder", root=root,
                   database=[root / r["image"] for r in db_rows], queries=queries, ground_truth=ground_truth,
                   positive_boxes=known if any(known) else None)
