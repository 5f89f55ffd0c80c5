"""The README's main job on the embedded default: the demo collection searched with the default preset."""
import json

import numpy as np
import pytest

from instar import Index, evaluate, search
from instar.tools.demo import build_demo
from instar.evaluation.datasets import load_dataset
from instar.presets import DEFAULT_PRESET, load_preset


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    coll = build_demo(root / "collection")
    ds = load_dataset("folder", data=coll)
    res = evaluate(ds, DEFAULT_PRESET, train=coll / "train", workdir=root)
    return coll, ds, res


def test_default_preset_ranks_every_positive_above_every_distractor(demo_eval):
    coll, ds, res = demo_eval
    # measured on seed 0: mAP 1.0000 (every query's positives fill the top of its ranking), with and without QE
    assert res.report.metrics["all"]["map"] == pytest.approx(1.0)
    spec = {q["name"]: set(q["positives"]) for q in json.loads((coll / "queries.json").read_text())["queries"]}
    names = [p.relative_to(coll / "images").as_posix() for p in ds.database]
    for qi, q in enumerate(ds.queries):
        n = len(spec[q.name])
        assert {names[i] for i in res.ranks[qi, :n]} == spec[q.name], q.name


def test_demo_search_api_returns_positives_first(demo_eval):
    coll, ds, res = demo_eval
    q = ds.queries[3]
    positives = {p for qq in json.loads((coll / "queries.json").read_text())["queries"] if qq["name"] == q.name
                 for p in qq["positives"]}
    with Index.open(res.index_path) as idx:
        hits = search(idx, q.image, box=q.box, k=len(positives), expansion="none")
        assert {h.name for h in hits} == positives
        assert np.all(np.diff([h.score for h in hits]) <= 1e-6)
