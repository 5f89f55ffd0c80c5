"""Filter entries (`filter.method`): each ranks the whole database for a query."""
