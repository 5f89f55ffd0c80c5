"""Re-rank entries (`rerank.method`): each re-scores the head of a ranking and says where the object is."""
