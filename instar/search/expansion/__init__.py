"""Expansion entries (`expansion.method`): a new query from the top of a ranking, searched again."""
