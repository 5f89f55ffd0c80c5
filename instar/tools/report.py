"""A self-contained HTML page of search hits: the query with its box, then ranked thumbnails with scores and boxes."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from ..extract import images as imgs
from ..search import Hit

THUMB = 256


def page_target_problem(html: Path) -> str | None:
    """Why an HTML page cannot be written at `html` (checked before searching), or None. Its folder must exist:
    a mistyped folder is refused, not created."""
    if html.is_dir():
        return "is a folder; give the page a file name, e.g. hits.html"
    if html.exists():
        return None if os.access(html, os.W_OK) else "is not writable"
    parent = html.parent
    if not parent.exists():
        return f"cannot be created: the folder {parent} does not exist"
    if not parent.is_dir():
        return f"cannot be created: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: no permission to write in {parent}"
    return None


def _thumbnail_data_uri(path: Path | str, box: Sequence[float] | None, colour: str, size: int = THUMB) -> str:
    image = imgs.load_image(path)
    scale = size / max(image.size)
    thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    if box is not None and tuple(box) != (0, 0, image.width, image.height):
        draw = ImageDraw.Draw(thumb)
        draw.rectangle([v * scale for v in box], outline=colour, width=3)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_or_placeholder(path: Path | str, box: Sequence[float] | None, colour: str, size: int = THUMB, *,
                          element_id: str | None = None, alt: str = "") -> str:
    """An <img> of the thumbnail, or, when the file is gone or unreadable, a placeholder saying why."""
    esc = html.escape
    ident = f' id="{esc(element_id)}"' if element_id else ""
    try:
        uri = _thumbnail_data_uri(path, box, colour, size)
    except imgs.ImageLoadError as e:
        return (f'<div class="missing"{ident} role="img" aria-label="{esc(alt)}: image unavailable" '
                f'style="width:{size}px;height:{size * 3 // 4}px">image unavailable<br>'
                f'<span class="reason">{esc(e.reason)}</span></div>')
    return f'<img{ident} src="{uri}" alt="{esc(alt)}">'


def hits_html(query: Path | str, box: Sequence[float] | None, hits: Sequence[Hit], *, title: str = "instar search",
              positives: set[str] | None = None) -> str:
    """HTML text of a results page; images are embedded, so the page can be moved or mailed on its own.

    A hit whose file is gone or unreadable (e.g. deleted since it was indexed) shows a placeholder with the reason.

    `positives` (hit names known to be correct, e.g. from ground truth) marks each hit green or red.
    """
    esc = html.escape
    cards = []
    for h in hits:
        verdict = ""
        if positives is not None:
            ok = h.name in positives
            verdict = f' data-correct="{str(ok).lower()}" style="border-color:{"#2a2" if ok else "#c22"}"'
        cards.append(
            f'<figure class="hit"{verdict}>{_image_or_placeholder(h.path, h.box, "#ff0", alt=h.name)}'
            f'<figcaption><b>#{h.rank}</b> {h.score:.4f}<br><span class="name">{esc(h.name)}</span></figcaption></figure>')
    box_text = "whole image" if box is None else ", ".join(f"{v:g}" for v in box)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
.query img {{ max-width: 320px; border: 3px solid #36c; }}
.hits {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure.hit {{ margin: 0; padding: 6px; border: 3px solid #ccc; background: #fff; width: {THUMB}px; }}
figure.hit img {{ max-width: {THUMB}px; max-height: {THUMB}px; display: block; }}
.name {{ font-size: 0.8em; color: #555; word-break: break-all; }}
.missing {{ display: flex; flex-direction: column; align-items: center; justify-content: center; text-align: center;
  background: #eee; color: #a22; font-size: 0.9em; max-width: 100%; }}
.missing .reason {{ color: #555; font-size: 0.85em; word-break: break-all; padding: 0 6px; }}
</style></head><body>
<h1>{esc(title)}</h1>
<section class="query"><h2>Query</h2>
{_image_or_placeholder(query, box, "#36c", 320, element_id="query", alt="query")}
<p>{esc(str(query))} — box: {esc(box_text)}</p></section>
<section><h2>{len(hits)} hits</h2><div class="hits">
{chr(10).join(cards)}
</div></section></body></html>
"""


def write_hits_html(out: Path | str, query: Path | str, box: Sequence[float] | None, hits: Sequence[Hit], **kw) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(hits_html(query, box, hits, **kw), encoding="utf-8")
    return out
