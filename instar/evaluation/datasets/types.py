"""The common structure every loader returns (`Dataset`, `Query`, `Report`), the names of the known datasets,
and the errors a loader raises."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


from ..metrics import DEFAULT_KAPPAS, compute_map, map_summary, ns_hits, revisited_protocols

Box = tuple[float, float, float, float]

KNOWN_DATASETS = ("roxford5k", "rparis6k", "oxford5k", "paris6k", "ukbench", "holidays", "folder",
                  "smvs-dvd-covers-test", "smvs-dvd-covers-ins", "smvs-dvd-covers-ins-test")

# smvs-dvd-covers: objects 001-050 are where instar's learned parts train (proposal network, triplet training),
# objects 051-100 are where they are measured (the "-test" variants)
SMVS_TEST_OBJECTS = tuple(f"{i:03d}" for i in range(51, 101))
SMVS_BOXES = "smvs-dvd-covers-boxes.json"  # package data: each phone photo's cover box, from instar's own matching


class DatasetError(ValueError):
    """A dataset that cannot be loaded or evaluated; the message names the file/folder and the problem."""


class MissingImagesError(DatasetError, FileNotFoundError):
    """Image files the ground truth needs are not there (message: the first missing one and how many)."""


# --------------------------------------------------------------------------------------------
# Common structure
# --------------------------------------------------------------------------------------------


@dataclass
class Query:
    """One query: the image file to load and, optionally, the box to crop it to before description."""

    name: str
    image: Path
    box: Box | None  # x0, y0, x1, y1 in original pixels
    db_index: int | None = None  # index of this query's own image in `Dataset.database`, if there


_METRIC_LABELS = {"map": "mAP", "ns": "N-S"}
_PROTOCOL_ORDER = ("easy", "medium", "hard", "all")


def _metric_order(key: str) -> tuple:
    if key == "map":
        return (0, 0)
    m = re.fullmatch(r"mp@(\d+)", key)
    if m:
        return (1, int(m.group(1)))
    return (2, key)


@dataclass
class Report:
    """Result of evaluating one dataset.

    ``metrics``: ``{protocol: {metric: float}}`` with protocol ``easy``/``medium``/``hard``
    (revisited) or ``all`` (every other kind); metric ``map``, ``mp@1``, ``mp@5``, ``mp@10``
    as fractions in [0, 1], and for UKBench ``ns`` (N-S score, in [0, 4]).
    ``per_query``: ``{protocol: {query_name: ap}}``; queries without a positive under a
    protocol (AP undefined, left out of the means) are absent. UKBench adds
    ``per_query['ns']``: ``{query_name: hits in the top 4}``.
    """

    dataset: str
    metrics: dict
    per_query: dict

    def table(self) -> str:
        """Plain-text table, one row per protocol; fractions as percentages with 2 decimals."""
        protos = sorted(self.metrics, key=lambda p: (_PROTOCOL_ORDER.index(p) if p in _PROTOCOL_ORDER else 99, p))
        keys: list[str] = []
        for p in protos:
            for k in self.metrics[p]:
                if k not in keys:
                    keys.append(k)
        keys.sort(key=_metric_order)
        headers = [_METRIC_LABELS.get(k, k.replace("mp@", "mP@")) for k in keys]
        first = max([len(self.dataset)] + [len(p) for p in protos])
        widths = [max(7, len(h)) for h in headers]
        lines = [self.dataset.ljust(first) + "".join("  " + h.rjust(w) for h, w in zip(headers, widths))]
        for p in protos:
            cells = []
            for k, w in zip(keys, widths):
                v = self.metrics[p].get(k)
                if v is None:
                    s = "-"
                elif isinstance(v, float) and math.isnan(v):
                    s = "nan"
                elif k == "ns":
                    s = f"{v:.2f}"
                else:
                    s = f"{100.0 * v:.2f}"
                cells.append("  " + s.rjust(w))
            lines.append(p.capitalize().ljust(first) + "".join(cells))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready copy (plain floats)."""
        return {"dataset": self.dataset, "metrics": self.metrics, "per_query": self.per_query}

    def __str__(self) -> str:
        return self.table()


@dataclass
class Dataset:
    """A benchmark: database image files (ground-truth order), queries and ground truth.

    ``ground_truth`` is one dict per query: revisited ``{'easy', 'hard', 'junk'}`` index
    arrays; other kinds ``{'ok', 'junk'}``. ``groups`` (UKBench, Holidays) is the (N,) group
    id of every database image.
    """

    name: str
    kind: str  # 'revisited' | 'classic' | 'ukbench' | 'holidays' | 'folder'
    root: Path
    database: list[Path] = field(repr=False)
    queries: list[Query] = field(repr=False)
    ground_truth: list[dict] = field(default_factory=list, repr=False)
    groups: np.ndarray | None = field(default=None, repr=False)
    kappas: tuple[int, ...] = DEFAULT_KAPPAS
    # where the query's object is in its positives, when the dataset knows it: per query {db index: box}
    positive_boxes: list[dict[int, Box]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ground_truth and len(self.ground_truth) != len(self.queries):
            raise DatasetError(f"{self.name}: {len(self.queries)} queries but {len(self.ground_truth)} ground-truth entries")

    def __repr__(self) -> str:
        return f"Dataset(name={self.name!r}, kind={self.kind!r}, root={str(self.root)!r}, database={len(self.database)} images, queries={len(self.queries)})"

    # -- evaluation -------------------------------------------------------------------------

    def check_ranks(self, ranks: np.ndarray) -> np.ndarray:
        """Validate a (Q, N') ranking: one row per query, distinct database indices in [0, N)."""
        r = np.asarray(ranks)
        q, n = len(self.queries), len(self.database)
        if r.ndim != 2 or r.shape[0] != q:
            raise DatasetError(f"{self.name}: ranks must have shape ({q} queries, up to {n} images), got {r.shape}")
        if r.size and not np.issubdtype(r.dtype, np.integer):
            raise DatasetError(f"{self.name}: ranks must hold integer database indices, got dtype {r.dtype}")
        if r.shape[1] > n:
            raise DatasetError(f"{self.name}: ranks rows have {r.shape[1]} entries but the database has {n} images")
        if r.size:
            lo, hi = int(r.min()), int(r.max())
            if lo < 0 or hi >= n:
                raise DatasetError(f"{self.name}: ranks hold index {lo if lo < 0 else hi}, outside 0..{n - 1}")
            s = np.sort(r, axis=1)
            dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
            if dup.size:
                raise DatasetError(f"{self.name}: the ranking of query {self.queries[dup[0]].name!r} lists an image twice")
        return r.astype(np.int64, copy=False)

    def evaluate(self, ranks: np.ndarray) -> Report:
        """Score rankings ``ranks`` (Q, N) int (database indices, best first, one row per query)."""
        r = self.check_ranks(ranks)
        names = [q.name for q in self.queries]
        if self.kind == "revisited":
            res = revisited_protocols(r, self.ground_truth, self.kappas)
            # a protocol under which no query has a positive (smvs-dvd-covers' Hard) is undefined: left out
            res = {p: d for p, d in res.items() if not np.all(np.isnan(d["aps"]))}
            metrics = {p: {k: v for k, v in d.items() if k not in ("aps", "prs")} for p, d in res.items()}
            per_query = {p: per_query_aps(names, d["aps"]) for p, d in res.items()}
            return Report(self.name, metrics, per_query)
        m, aps, mpr, _ = compute_map(r, self.ground_truth, self.kappas)
        metrics: dict[str, Any] = map_summary(m, mpr, self.kappas)
        per_query: dict[str, Any] = {"all": per_query_aps(names, aps)}
        if self.kind == "ukbench":
            qidx = np.array([q.db_index for q in self.queries], dtype=np.int64)
            hits = ns_hits(r, self.groups, qidx)
            metrics["ns"] = float(hits.mean()) if hits.size else float("nan")
            per_query["ns"] = {n: int(h) for n, h in zip(names, hits)}
        return Report(self.name, {"all": metrics}, per_query)


def per_query_aps(names: Sequence[str], aps: np.ndarray) -> dict[str, float]:
    return {n: float(a) for n, a in zip(names, aps) if not np.isnan(a)}
