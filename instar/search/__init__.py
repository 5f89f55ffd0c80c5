"""Search: the vocabulary (`types`), the filter / rerank / expansion stages (one module per entry), and the
pipeline that composes them (`pipeline`). `from instar.search import search, Hit` stays the public path."""
from .pipeline import Searcher, SearchPipeline, hits_of, search
from .sharded import ShardedIndex, open_index
from .types import Database, Hit, Query, Ranking, RegionTable, knn
from ..core.registry import SEARCH_SECTIONS

__all__ = ["SEARCH_SECTIONS", "Database", "Hit", "Query", "Ranking", "RegionTable", "Searcher", "SearchPipeline", "hits_of", "knn",
           "search", "ShardedIndex", "open_index"]
