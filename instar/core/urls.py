"""Where to fetch a published file from: its official URL, or the same file name on a mirror."""
from __future__ import annotations

import urllib.parse
from pathlib import Path, PurePosixPath


def url_basename(url: str) -> str:
    """The file name at the end of `url`'s path ('' when the path ends with '/')."""
    return PurePosixPath(urllib.parse.urlparse(url).path).name


def mirror_url(url: str, mirror: str | None) -> str:
    """`url` itself, or ``mirror/<basename of url>``; a mirror without ``://`` is a local folder (a file:// URL)."""
    if not mirror:
        return url
    base = mirror if "://" in mirror else Path(mirror).expanduser().resolve().as_uri()
    return base.rstrip("/") + "/" + url_basename(url)
