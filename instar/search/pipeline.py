"""Search: filter -> re-rank -> query expansion -> hits with boxes, each stage an entry of its registry."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.registry import EXPANSIONS, FILTERS, RERANKERS, SEARCH_SECTIONS
from ..extract.images import ImageLoadError
from ..index import descriptor_problem
from .types import Database, Hit, Query, Ranking


class SearchPipeline:
    """The preset's filter, re-ranker and expansion, composed: `pipeline(db, query, k) -> Ranking`."""

    def __init__(self, preset, overrides: dict | None = None):
        if overrides:
            preset = preset.with_overrides(overrides)
        self.preset = preset
        self.filter = FILTERS.build_section(preset["filter"])
        self.rerank = RERANKERS.build_section(preset["rerank"])
        self.expansion = EXPANSIONS.build_section(preset["expansion"])

    def __call__(self, db: Database, query: Query, k: int, *, localise: int | None = None) -> Ranking:
        """The top `k` of `db` for `query`; boxes for the first `localise` (default all k) where the stages localise."""
        depth = max(k, self.rerank.top, self.expansion.top)
        ranking = self.filter(db, query, depth)
        ranking = self.expansion.before_rerank(db, query, ranking)
        ranking = self.rerank(db, query, ranking)
        expanded = self.expansion(db, query, ranking, depth)
        if expanded is not ranking:
            ranking = expanded
        ranking = ranking.head(k)
        n = len(ranking) if localise is None else min(localise, len(ranking))
        if n and ranking.boxes is None and hasattr(self.rerank, "localise"):
            boxes = np.full((len(ranking), 4), np.nan, np.float32)
            boxes[:n] = self.rerank.localise(db, query, ranking.positions[:n])
            ranking = replace(ranking, boxes=boxes)
        return ranking


class Searcher:
    """One index searched many times through its preset's pipeline (what `search` and `instar eval` both run):
    the stages are built once and the database read from one snapshot (`refresh()` takes a new one).

    `preset`: the stages to run (default: the index's); `overrides` change its search-time values ('filter.*',
    'rerank.*', 'expansion.*', 'search.k'); `expansion` is a shorthand for 'expansion.method'."""

    def __init__(self, index, *, preset=None, overrides: dict | None = None, expansion: str | None = None):
        overrides = dict(overrides or {})
        if expansion is not None:
            overrides["expansion.method"] = expansion
        bad = [key for key in overrides if key.partition(".")[0] not in SEARCH_SECTIONS]
        if bad:
            raise ValueError(f"{bad[0]}: only search-time settings can change at search time "
                             f"({', '.join(s + '.*' for s in SEARCH_SECTIONS)})")
        self.index = index
        self.pipeline = SearchPipeline(index.preset if preset is None else preset, overrides)
        if hasattr(index, "wrap_filter"):  # a sharded index: each shard filters its own rows, then merged by score
            self.pipeline.filter = index.wrap_filter(self.pipeline.filter)
        self.refresh()

    def refresh(self) -> None:
        """See the images committed since this searcher (or its last refresh) read the index."""
        self.db = Database.from_index(self.index)
        if hasattr(self.pipeline.filter, "refresh"):
            self.pipeline.filter.refresh()

    def query(self, query: Path | str | np.ndarray, box: Sequence[float] | None = None) -> Query:
        """A `Query` of an image file (optionally a box on it) or a ready (D,) descriptor; a query with no usable
        content (too small, blank or featureless for its descriptor to be non-zero) is refused with an
        `ImageLoadError` (a descriptor: ValueError)."""
        if isinstance(query, np.ndarray):
            if box is not None:
                raise ValueError("a box applies to a query image, not to a ready descriptor")
            q = Query(self.index.extractor, vector=query)  # later stages (e.g. its coding) may describe it further
            problem = descriptor_problem(q.vector)
            if problem:
                raise ValueError(f"query descriptor: {problem}")
            return q
        q = Query(self.index.extractor, query, box)
        problem = descriptor_problem(q.vector)
        if problem:
            where = "" if box is None else f"box {','.join(f'{float(v):g}' for v in box)}: "
            raise ImageLoadError(query, where + problem)
        return q

    def rank(self, query: Query, k: int | None = None, *, localise: int | None = None) -> Ranking:
        """The top `k` (default the preset's `search.k`) of the database for `query`; boxes for the first
        `localise` (default all)."""
        k = self.pipeline.preset["search"]["k"] if k is None else k
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k={k}: the number of hits must be a whole number of at least 1")
        if self.db.n_live == 0:
            return Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32))
        if query.vector.shape != self.db.vectors.shape[1:]:
            raise ValueError(f"query descriptor of shape {query.vector.shape}, the index holds dimension "
                             f"{self.db.vectors.shape[1]}")
        return self.pipeline(self.db, query, int(k), localise=localise)

    def hits(self, ranking: Ranking) -> list[Hit]:
        return hits_of(self.index, self.db, ranking)


def search(index, query: Path | str | np.ndarray, *, box: Sequence[float] | None = None, k: int | None = None,
           expansion: str | None = None, overrides: dict | None = None) -> list[Hit]:
    """Search an `instar.Index` with an image file (optionally a box on it) or a ready (D,) descriptor.

    Stages and k come from the index's preset; `overrides` changes search-time values ('filter.*', 'rerank.*',
    'expansion.*', 'search.k'); `expansion` is a shorthand for 'expansion.method'. Only live (not removed)
    images are searched, in one consistent snapshot. A query with no usable content (too small, blank or
    featureless for its descriptor to be non-zero) is refused with an `ImageLoadError`.
    """
    searcher = Searcher(index, overrides=overrides, expansion=expansion)
    k = searcher.pipeline.preset["search"]["k"] if k is None else k
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k={k}: the number of hits must be a whole number of at least 1")
    q = searcher.query(query, box)
    return searcher.hits(searcher.rank(q, k))


def hits_of(index, db: Database, ranking: Ranking) -> list[Hit]:
    """`Hit`s for a ranking: records from the index, boxes from the ranking (whole image where none)."""
    rows = db.rows[ranking.positions]
    records = index.records(rows.tolist())
    hits = []
    for i, (s, r) in enumerate(zip(ranking.scores, records)):
        box = (0.0, 0.0, float(r.width), float(r.height))
        if ranking.boxes is not None and np.all(np.isfinite(ranking.boxes[i])):
            box = tuple(float(v) for v in ranking.boxes[i])
        hits.append(Hit(rank=i + 1, score=float(s), row=r.row, id=r.id, name=r.name, path=r.path, box=box))
    return hits
