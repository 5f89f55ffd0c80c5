"""Instance search with Deep Region Hashing codes (Song et al. sec. 3.2): gDRH -> gQE -> lDRH -> lQE.

The stages read the binary codes a coding preset stores (`instar.extract.coding`: `codes`, one per image, and
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

from ..core import binary
from ..core.groups import group_reduce
from ..store.columns import CODES, REGION_CODES
from .types import Database, Query, Ranking


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
        every = len(db.rows) == snap.n_rows  # positions are the store's rows (`Database.from_index`)
        starts, counts = snap.spans(REGION_CODES) if every else snap.spans(REGION_CODES, db.rows)
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
    d = binary.distances(np.asarray(codes[items]), targets).min(axis=1)
    best, arg = group_reduce(-d.astype(np.float32), c, "max")
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


def reorder_head(ranking: Ranking, distances: np.ndarray, bits: int, boxes: np.ndarray | None = None) -> Ranking:
    """The first len(distances) of `ranking` re-ordered by ascending Hamming `distances` (stable), scored by
    similarity; the tail kept (`Ranking.rescore_head`)."""
    return ranking.rescore_head(similarity(distances, bits), boxes)


def code_bits(db: Database) -> int:
    return 8 * database_codes(db).shape[1]
