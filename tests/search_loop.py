"""Searcher process for tests/test_concurrency.py: re-open the index for every query, as a server would, until
STOP exists (then one last round). Each round checks what it sees -- every live row verifies against its
checksum and is a unit vector -- searches, and appends one JSON line to LOG. Any failure is an uncaught
exception: a traceback on stderr and a non-zero exit status, which the test reports.

    python tests/search_loop.py INDEX QUERY_IMAGE STOP LOG
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

from instar import Index, search
from instar.store.columns import GLOBAL


def main(index: Path, query: Path, stop: Path, log: Path) -> None:
    with open(log, "w") as out:
        out.write(json.dumps({"ready": True}) + "\n")
        out.flush()
        while True:
            last = stop.exists()
            with Index.open(index) as idx:
                snap = idx.snapshot()
                live = snap.live_rows()
                damaged = idx.store.verify(snapshot=snap)
                assert damaged == [], damaged
                vectors = np.asarray(snap.column(GLOBAL))[live]
                norms = np.linalg.norm(vectors, axis=1)
                assert np.allclose(norms, 1.0, atol=1e-4), f"rows that are not unit vectors: {live[~np.isclose(norms, 1.0, atol=1e-4)]}"
                hits = search(idx, query, k=5) if len(live) else []
                assert all(0 <= h.row < idx.snapshot().n_rows for h in hits)
            out.write(json.dumps({"t": time.time(), "rows": int(snap.n_rows), "hits": [h.name for h in hits]}) + "\n")
            out.flush()
            if last:
                return


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:5]))
