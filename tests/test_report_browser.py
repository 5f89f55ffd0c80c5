"""The HTML page of hits, opened in a real headless Chromium (Debian's chromium + chromium-driver)."""
import pytest
from PIL import Image

from instar import Index, list_images, search
from instar.tools.report import write_hits_html

PIXEL_AT = """
const img = document.getElementById(arguments[0]);
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
return Array.from(g.getImageData(arguments[1], arguments[2], 1, 1).data.slice(0, 3));
"""


def test_hits_page_renders_ranked_thumbnails_and_query_box(browser, tmp_path, photos, fast_preset):
    with Index.create(tmp_path / "p.index", fast_preset, train=list_images(photos)) as idx:
        idx.add(list_images(photos), root=photos)
        w, h = Image.open(photos / "coffee.jpg").size
        box = (round(w * 0.2), round(h * 0.25), round(w * 0.7), round(h * 0.8))
        hits = search(idx, photos / "coffee.jpg", box=box, k=4, expansion="none")
    page = write_hits_html(tmp_path / "hits.html", photos / "coffee.jpg", box, hits, positives={"coffee.jpg"})

    browser.get(page.as_uri())
    assert browser.title == "instar search"
    figures = browser.find_elements("css selector", "figure.hit")
    assert len(figures) == 4
    # every embedded image decodes to the thumbnail size the page promises
    sizes = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
    assert len(sizes) == 5 and all(ok for ok, _, _ in sizes)
    assert max(sizes[0][1:]) == 320 and all(max(s[1:]) == 256 for s in sizes[1:])
    # cards are in rank order, named after the hits, and the known positive is marked correct in green
    captions = [f.find_element("css selector", "figcaption").text for f in figures]
    assert [c.split()[0] for c in captions] == ["#1", "#2", "#3", "#4"]
    assert [c.splitlines()[-1] for c in captions] == [hit.name for hit in hits]
    assert hits[0].name == "coffee.jpg" and figures[0].get_attribute("data-correct") == "true"
    assert all(f.get_attribute("data-correct") == "false" for f in figures[1:])
    assert figures[0].value_of_css_property("border-top-color") == "rgba(34, 170, 34, 1)"
    assert figures[1].value_of_css_property("border-top-color") == "rgba(204, 34, 34, 1)"
    # the query box is drawn in blue (#36c) where the box lies, scaled to the 320-px thumbnail
    scale = 320 / max(w, h)
    mid_x, top_y = round((box[0] + box[2]) / 2 * scale), round(box[1] * scale)
    r, g, b = browser.execute_script(PIXEL_AT, "query", mid_x, top_y)
    assert abs(r - 0x33) < 40 and abs(g - 0x66) < 40 and abs(b - 0xCC) < 40, (r, g, b)
    # and not across the whole picture: a pixel well inside the box keeps the photograph's colour
    inner = browser.execute_script(PIXEL_AT, "query", mid_x, round((box[1] + box[3]) / 2 * scale))
    assert inner != [r, g, b]
