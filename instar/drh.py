"""Instance search with Deep Region Hashing codes (Song et al. sec. 3.2): gDRH -> gQE -> lDRH -> lQE.

The stages read the binary codes a coding preset stores (`instar.coding`: `codes`, one per image, and
`region_codes`, one per stored region) and the query's codes, which the index's coding stage computes from the
query's global vector (the query crop: DRH's query is an image patch) on first use (`query_codes`).

- filter `hamming` (gDRH): every image ranked by the Hamming distance between its global code and the query's;
- re-ranker `ldrh` (lDRH): the top M images re-scored by the minimum Hamming distance between the query code and
  their region codes; that region's box is the hit's box (and `localise` gives it for any image);
- expansions `gqe` (gQE: the top M re-ordered by each image's best Hamming similarity to the global codes of the top
  q, applied "after the gDRH and before the lDRH", i.e. on the filter's list: `before_rerank`), `lqe` (lQE: the
  best-matching region code of each of the top q images of the lDRH ranking -- the region lDRH matched -- compared
  with every region of the top M; each image scored by its best match) and `gqe+lqe` (both, Table 3's "DRH All").

Scores are Hamming similarities 1 - 2 d / L (the cosine of the +-1 codes), so higher is better as for the float
stages. Equal distances keep the order they had (stable sorts), so every ranking is deterministic.
"""
from __future__ import annotations

import numpy as np

from . import hamming
from .coding import CODES, REGION_CODES
from .filter import _reduce
from .registry import EXPANSIONS, FILTERS, RERANKERS
from .search import Database, Query, Ranking


def database_codes(db: Database) -> np.ndarray:
    """(N, B) uint8 global codes of the database's live images (the index's memory map when none was removed)."""
    def load() -> np.ndarray:
        snap = db.snapshot
        if snap is None or CODES not in snap.columns:
            raise ValueError("a Hamming search needs binary codes, but this index stores none "
                             "(its preset has coding.method = 'none'; e.g. coding.method = 'drh')")
        codes = snap.column(CODES)
        return codes if len(db.rows) == snap.n_rows else np.asarray(codes[db.rows])
    return db.cached(CODES, load)


def database_region_codes(db: Database) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts (N,), counts (N,), codes (T, B) uint8): image i's region codes are codes[starts[i]:starts[i] + counts[i]]."""
    def load():
        snap = db.snapshot
        if snap is None or REGION_CODES not in snap.columns:
            raise ValueError("a region Hamming stage needs region codes, but this index stores none "
                             "(its preset has coding.method = 'none')")
        starts, counts = snap.spans(REGION_CODES, db.rows)
        return starts, counts, snap.column(REGION_CODES)
    return db.cached(REGION_CODES, load)


def query_codes(query: Query) -> np.ndarray:
    """(B,) uint8: the query's global code, by the index's coding stage, from the query's global vector."""
    def compute() -> np.ndarray:
        coding = getattr(query.extractor, "coding", None)
        if coding is None or not hasattr(coding, "codes"):
            raise ValueError("a Hamming search codes the query with the index's coding stage, but there is none "
                             "(coding.method = 'none', or a query without the index's extractor)")
        return coding.codes(query.vector)[0]
    return query.cached(CODES, compute)


def similarity(distances: np.ndarray, bits: int) -> np.ndarray:
    """Hamming distances -> similarities 1 - 2 d / L (float32)."""
    return (1.0 - 2.0 * np.asarray(distances, np.float64) / bits).astype(np.float32)


def region_matches(db: Database, positions: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each image of `positions`: the minimum Hamming distance between its region codes and any of `targets`
    (T, B), the item (row of the `region_codes` column) reaching it first, and that item's offset among the
    image's regions. (n,) int64 each; an image without regions gets distance L + 1 and item / offset -1."""
    starts, counts, codes = database_region_codes(db)
    positions = np.asarray(positions, dtype=np.int64)
    s, c = starts[positions], counts[positions]
    n, bits = len(positions), 8 * codes.shape[1]
    dist, item, offset = np.full(n, bits + 1, np.int64), np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    total = int(c.sum())
    if total == 0 or len(targets) == 0:
        return dist, item, offset
    first = np.cumsum(c) - c
    items = np.repeat(s - first, c) + np.arange(total)
    d = hamming.distances(np.asarray(codes[items]), targets).min(axis=1)
    best, arg = _reduce(-d.astype(np.float32), c, "max")
    ok = arg >= 0
    dist[ok] = -best[ok].astype(np.int64)
    item[ok] = items[arg[ok]]
    offset[ok] = arg[ok] - first[ok]
    return dist, item, offset


def region_boxes(db: Database, positions: np.ndarray, offsets: np.ndarray, who: str) -> np.ndarray:
    """(n, 4) float32 boxes (original pixels) of region `offsets[i]` of image `positions[i]`; NaN where offset < 0."""
    table = db.require_regions(who)
    boxes = np.full((len(positions), 4), np.nan, np.float32)
    ok = (offsets >= 0) & (offsets < table.counts[positions])
    boxes[ok] = table.boxes[table.starts[positions[ok]] + offsets[ok]]
    return boxes


def _reorder_head(ranking: Ranking, m: int, distances: np.ndarray, bits: int,
                  boxes: np.ndarray | None = None) -> Ranking:
    """The first `m` of `ranking` re-ordered by ascending `distances` (stable), scored by similarity; the tail kept.
    `boxes` (m, 4) replace the head's boxes when given; otherwise the ranking's own boxes follow their images."""
    order = np.argsort(distances, kind="stable")
    positions = np.concatenate([ranking.positions[:m][order], ranking.positions[m:]])
    scores = np.concatenate([similarity(distances[order], bits), ranking.scores[m:]])
    if boxes is not None:
        tail = ranking.boxes[m:] if ranking.boxes is not None else np.full((len(ranking) - m, 4), np.nan, np.float32)
        all_boxes = np.concatenate([boxes[order], tail])
    elif ranking.boxes is not None:
        all_boxes = np.concatenate([ranking.boxes[:m][order], ranking.boxes[m:]])
    else:
        all_boxes = None
    return Ranking(positions, scores.astype(np.float32), all_boxes)


def _bits(db: Database) -> int:
    return 8 * database_codes(db).shape[1]


# ------------------------------------------------------------------------------------------ stages


@FILTERS.register("hamming")
class GlobalRegionHashingSearch:
    """gDRH: every image ranked by the Hamming distance between its global region code and the query's (DRH sec. 3.2)."""
    needs_codes = True

    def __call__(self, db: Database, query: Query, k: int) -> Ranking:
        codes = database_codes(db)
        d, positions = hamming.knn(codes, query_codes(query)[None], k)
        return Ranking(positions[0], similarity(d[0], 8 * codes.shape[1]))


@RERANKERS.register("ldrh")
class LocalRegionHashing:
    """lDRH: the top M images re-scored by the min Hamming distance between the query code and their region codes (DRH sec. 3.2)."""
    needs_regions = True
    needs_codes = True

    def __init__(self, *, top: int = 400):
        if top < 1:
            raise ValueError(f"rerank.top = {top}: must be at least 1")
        self.top = top

    def __call__(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        m = min(self.top, len(ranking))
        head = ranking.positions[:m]
        d, _, offsets = region_matches(db, head, query_codes(query)[None])
        boxes = region_boxes(db, head, offsets, "rerank.method = 'ldrh'")
        return _reorder_head(ranking, m, d, _bits(db), boxes)

    def localise(self, db: Database, query: Query, positions: np.ndarray) -> np.ndarray:
        """The box of each image's region whose code is nearest the query's, (n, 4) float32."""
        positions = np.asarray(positions, dtype=np.int64)
        _, _, offsets = region_matches(db, positions, query_codes(query)[None])
        return region_boxes(db, positions, offsets, "rerank.method = 'ldrh'")


def global_query_expansion(db: Database, ranking: Ranking, q: int, top: int) -> Ranking:
    """gQE: the top `top` of `ranking` re-ordered by each image's min Hamming distance to the global codes of the top `q`."""
    m = min(top, len(ranking))
    if m == 0 or q < 1:
        return ranking
    codes = database_codes(db)
    head = np.asarray(codes[ranking.positions[:m]])
    d = hamming.distances(head, head[:q]).min(axis=1)
    return _reorder_head(ranking, m, d, 8 * codes.shape[1])


def local_query_expansion(db: Database, query: Query, ranking: Ranking, q: int, top: int) -> Ranking:
    """lQE: the region code nearest the query's in each of the top `q` images, compared with every region of the
    top `top`; each image re-scored by its min Hamming distance to any of them."""
    m = min(top, len(ranking))
    if m == 0 or q < 1:
        return ranking
    head = ranking.positions[:m]
    _, items, _ = region_matches(db, head[:q], query_codes(query)[None])
    items = items[items >= 0]
    if len(items) == 0:
        return ranking
    expansion = np.asarray(database_region_codes(db)[2][items])
    d, _, _ = region_matches(db, head, expansion)
    return _reorder_head(ranking, m, d, _bits(db))


def _check_q(q: int, top: int, who: str) -> None:
    if q < 1 or top < 1:
        raise ValueError(f"expansion.method = {who!r}: q and top must be at least 1 (got q = {q}, top = {top})")


@EXPANSIONS.register("gqe")
class GlobalRegionHashingQE:
    """gQE: the top M re-ordered by their best Hamming similarity to the global codes of the top q, before lDRH (DRH sec. 3.2)."""
    needs_codes = True

    def __init__(self, *, q: int = 6, top: int = 400):
        _check_q(q, top, "gqe")
        self.q, self.top = q, top

    def before_rerank(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        return global_query_expansion(db, ranking, self.q, self.top)

    def __call__(self, db, query, ranking, filter_, k):
        return ranking


@EXPANSIONS.register("lqe")
class LocalRegionHashingQE:
    """lQE: the best-matching region codes of the top q images vs every region of the top M, max similarity (DRH sec. 3.2)."""
    needs_codes = True
    needs_regions = True

    def __init__(self, *, q: int = 6, top: int = 400):
        _check_q(q, top, "lqe")
        self.q, self.top = q, top

    def __call__(self, db, query, ranking, filter_, k):
        return local_query_expansion(db, query, ranking, self.q, self.top)


@EXPANSIONS.register("gqe+lqe")
class RegionHashingQE:
    """gQE (q = `q_global`) before lDRH and lQE (q = `q_local`) after it: Table 3's full DRH (DRH sec. 3.2)."""
    needs_codes = True
    needs_regions = True

    def __init__(self, *, q_global: int = 6, q_local: int = 6, top: int = 400):
        _check_q(q_global, top, "gqe+lqe")
        _check_q(q_local, top, "gqe+lqe")
        self.q_global, self.q_local, self.top = q_global, q_local, top

    def before_rerank(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        return global_query_expansion(db, ranking, self.q_global, self.top)

    def __call__(self, db, query, ranking, filter_, k):
        return local_query_expansion(db, query, ranking, self.q_local, self.top)
