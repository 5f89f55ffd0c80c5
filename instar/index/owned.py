"""Files an index owns: a folder inside it (the service's `uploads/`) whose files exist only for the rows that
store them. An add interrupted by `kill -9` can leave files there that no committed row owns; `remove_unowned`
deletes them under the writer's lock, so no add is under way while it looks."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .index import Index

log = logging.getLogger(__name__)


def remove_unowned(index: Index, folder: Path | str) -> list[Path]:
    """Delete every entry of `folder` (the index's own folder of files, not a user's photos) that no live row
    stores, partial files included; returns what was deleted. Takes the writer's lock (StoreBusy if another
    process holds it)."""
    folder = Path(folder)
    removed: list[Path] = []
    with index.writing():
        if not folder.is_dir():
            return removed
        owned = {r.path for r in index.records()}
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        for name in names:
            path = folder / name
            if str(path) not in owned:
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("%s: removed %d files no committed row owns (left by an interrupted add)", folder, len(removed))
    return removed


def remove_owned(index: Index, path: str, folder: Path | str) -> list:
    """Remove the live image stored under file path `path` and, when the file lies in `folder` (files the index
    owns), the file too, both under the writer's lock; IndexError_ if it is not (or no longer) in the index."""
    with index.writing():
        removed = index.remove([path])
        if Path(path).parent == Path(folder) and index.live_record(path) is None:
            Path(path).unlink(missing_ok=True)
    return removed
