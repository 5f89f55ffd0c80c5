"""The `ann` filter: approximate k-NN of the query's global descriptor through a faiss index named by its factory
string (`instar.search.ann`: derived data beside the store, extended on add, removed rows masked inside the
search), optionally re-scoring the top `rescore` candidates exactly from the memory-mapped float vectors."""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...core.protocols import FilterStage
from ...core.registry import FILTERS, Range
from .. import ann
from ..types import Database, Query, Ranking, masked_knn


@FILTERS.register("ann")
class ApproximateKNN(FilterStage):
    """Approximate k-NN by inner product through a faiss index (`index`: factory string, e.g. HNSW32 or
    IVF1024,PQ64; `nprobe`, `ef_search`), trained on the first `train` rows; `rescore` > 0 re-scores that many
    candidates exactly from the stored vectors."""

    def __init__(self, *, index: str = "HNSW32", nprobe: Annotated[int, Range(ge=1)] = 32,
                 ef_search: Annotated[int, Range(ge=1)] = 128, rescore: Annotated[int, Range(ge=0)] = 0,
                 train: Annotated[int, Range(ge=1)] = 65536):
        if nprobe < 1 or ef_search < 1 or rescore < 0 or train < 1:
            raise ValueError(f"filter.method = 'ann': nprobe ({nprobe}), ef_search ({ef_search}) and train ({train}) "
                             f"must be at least 1, rescore ({rescore}) at least 0")
        self.index, self.nprobe, self.ef_search, self.rescore, self.train = index, nprobe, ef_search, rescore, train

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        return self.search(db, query.vector, k)

    def search(self, db: Database, vector: np.ndarray, k: int) -> Ranking:
        snap = db.snapshot
        if snap is None:  # a database built in memory: nothing to derive an index from, search exactly
            scores, positions = masked_knn(db.vectors, vector, k, db.removed)
            return Ranking(positions, scores)
        k = min(int(k), db.n_live)
        if k <= 0:
            return Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32))
        index = ann.for_snapshot(snap, self.index, self.train)
        depth = min(max(k, self.rescore), db.n_live)
        with index.lock:
            sel, keep_alive = db.cached(("ann-selector", index.n_rows),
                                        lambda: ann.selector(len(db), index.n_rows, snap.removed))
            params, _inner = ann.search_parameters(index.index, sel, self.nprobe, self.ef_search)
            scores, labels = index.index.search(np.asarray(vector, np.float32)[None], depth, params=params)
            del keep_alive
        ok = labels[0] >= 0
        positions, scores = labels[0][ok].astype(np.int64), scores[0][ok]
        if self.rescore and len(positions):
            order = np.argsort(positions)  # read the memory map in row order
            exact = np.empty(len(positions), np.float32)
            exact[order] = np.asarray(db.vectors[positions[order]], np.float32) @ np.asarray(vector, np.float32)
            scores = exact
        best = np.lexsort((positions, -scores))[:k]
        return Ranking(positions[best], scores[best].astype(np.float32))
