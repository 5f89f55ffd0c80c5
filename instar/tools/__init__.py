"""Tools around search: box matching (`matching`), the HTML page of hits (`report`), the demo collection (`demo`)."""
