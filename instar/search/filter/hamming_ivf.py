"""The `hamming-ivf` filter: sub-linear gDRH. The global codes go into a faiss binary index named by its factory
string (`BIVF1024`: an inverted file over Hamming k-means cells; `BHNSW32`; `BFlat`: exact), derived data kept
like the `ann` filter's (`instar.search.ann`: trained on the first rows, extended on add, persisted atomically and
checksummed beside the store). Only `nprobe` of the cells are scanned; removed rows (and rows newer than the
snapshot) are dropped from an over-fetched list, so the top k are the best live ones the probed cells hold.
Results are ordered by (distance, position) like the exact `hamming` filter's, so with nprobe = the number of
cells (or a `BFlat` factory) the ranking equals the exact one."""
from __future__ import annotations

from typing import Annotated

import numpy as np

from ...core.protocols import FilterStage
from ...core.registry import FILTERS, Range
from ...store.columns import CODES
from .. import ann
from ..codes import database_codes, query_codes, similarity
from ..types import Database, Query, Ranking


@FILTERS.register("hamming-ivf")
class HammingIVFSearch(FilterStage):
    """gDRH through a faiss binary index (`index`: BIVF1024, BHNSW32, BFlat), `nprobe` cells scanned, trained on the
    first `train` rows: sub-linear Hamming ranking of the global codes."""
    needs_codes = True

    def __init__(self, *, index: str = "BIVF1024", nprobe: Annotated[int, Range(ge=1)] = 16,
                 ef_search: Annotated[int, Range(ge=1)] = 128, train: Annotated[int, Range(ge=1)] = 65536):
        if nprobe < 1 or ef_search < 1 or train < 1:
            raise ValueError(f"filter.method = 'hamming-ivf': nprobe ({nprobe}), ef_search ({ef_search}) and train "
                             f"({train}) must be at least 1")
        self.index, self.nprobe, self.ef_search, self.train = index, nprobe, ef_search, train

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        codes = database_codes(db)
        bits = 8 * codes.shape[1]
        k = min(int(k), db.n_live)
        if db.snapshot is None or k <= 0:
            raise ValueError("filter.method = 'hamming-ivf' searches an index's codes: build the Database from an index")
        built = ann.for_snapshot(db.snapshot, self.index, self.train, CODES)
        extra = (len(db) - db.n_live) + (built.n_rows - len(db))
        with built.lock:
            inner = built.index
            if hasattr(inner, "nprobe"):
                inner.nprobe = int(self.nprobe)
            if hasattr(inner, "hnsw"):
                inner.hnsw.efSearch = int(self.ef_search)
            d, labels = inner.search(np.ascontiguousarray(query_codes(query)[None]), min(k + extra, built.n_rows))
        d, labels = d[0].astype(np.int64), labels[0].astype(np.int64)
        ok = (labels >= 0) & (labels < len(db))
        d, labels = d[ok], labels[ok]
        if db.removed is not None:
            live = ~db.removed[labels]
            d, labels = d[live], labels[live]
        order = np.lexsort((labels, d))[:k]
        return Ranking(labels[order], similarity(d[order], bits))
