"""The search service (`instar serve`): the FastAPI application over an index, and its web page (`instar/web`)."""
