"""The `none` re-ranker: the filter's order as it is."""
from __future__ import annotations

from ...core.protocols import RerankStage
from ...core.registry import RERANKERS
from ..types import Database, Query, Ranking


@RERANKERS.register("none")
class NoRerank(RerankStage):
    """Keep the filter's order."""

    def __call__(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        return ranking
