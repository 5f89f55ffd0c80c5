"""The search page in a real headless Chromium against a real `instar serve` on 127.0.0.1: pick a photo
through the file input, draw the query box with mouse (or touch) pointer events on the canvas, search, and
check that the first hit is the expected photo and that every hit's box overlay lies where the API's box
says, scaled to the displayed thumbnail (within 2 px). Screenshots go to pytest's tmp_path, never the repo."""
import httpx
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.support.ui import WebDriverWait

TOLERANCE = 2  # px


def viewport(driver, width: int, height: int, *, mobile: bool = False) -> None:
    """The page's layout viewport in CSS pixels (a phone's when mobile: touch events and no scroll bars)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": mobile, "maxTouchPoints": 5})


def wait(driver, condition, timeout=30):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def rect(driver, element) -> dict:
    return driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                 "return {left: r.left, top: r.top, width: r.width, height: r.height};", element)


def open_page(driver, server, query: str = "") -> None:
    driver.get(server.url + "/" + query)
    wait(driver, lambda d: "images" in d.find_element("id", "index-info").text)


def pick_photo(driver, path) -> dict:
    driver.find_element("id", "file").send_keys(str(path))
    wait(driver, lambda d: d.find_element("id", "stage").is_displayed()
         and d.execute_script("return document.getElementById('photo').naturalWidth") > 0)
    return rect(driver, driver.find_element("id", "canvas"))


def drag_box(driver, fractions, *, touch: bool = False) -> tuple[float, ...]:
    """Drag across the canvas from one corner to the other of a box given in fractions of the displayed photo,
    with the mouse (ActionChains) or a touch pointer; returns the box the page should send, in the photo's
    original pixels."""
    canvas = driver.find_element("id", "canvas")
    r = rect(driver, canvas)
    fx0, fy0, fx1, fy1 = fractions
    # whole viewport pixels, as pointer actions use
    x0, y0 = int(r["left"] + r["width"] * fx0), int(r["top"] + r["height"] * fy0)
    x1, y1 = int(r["left"] + r["width"] * fx1), int(r["top"] + r["height"] * fy1)
    if touch:
        actions = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
        actions.pointer_action.move_to_location(x0, y0).pointer_down()
        actions.pointer_action.move_to_location((x0 + x1) // 2, (y0 + y1) // 2)
        actions.pointer_action.move_to_location(x1, y1).pointer_up()
        actions.perform()
    else:
        chain = ActionChains(driver, duration=50)
        chain.w3c_actions.pointer_action.move_to_location(x0, y0)
        dx, dy = (x1 - x0) // 2, (y1 - y0) // 2
        chain.click_and_hold().move_by_offset(dx, dy).move_by_offset(x1 - x0 - dx, y1 - y0 - dy).release().perform()
    natural = driver.execute_script("const p = document.getElementById('photo'); return [p.naturalWidth, p.naturalHeight];")
    sx, sy = natural[0] / r["width"], natural[1] / r["height"]
    return (x0 - r["left"]) * sx, (y0 - r["top"]) * sy, (x1 - r["left"]) * sx, (y1 - r["top"]) * sy


def page_box(driver) -> list[int]:
    text = wait(driver, lambda d: d.find_element("id", "stage").get_attribute("data-box"))
    return [int(v) for v in text.split(",")]


def submit(driver, k: int | None = None) -> list:
    if k is not None:
        field = driver.find_element("id", "k")
        field.clear()
        field.send_keys(str(k))
    driver.find_element("id", "search").click()
    wait(driver, lambda d: "hits in" in d.find_element("id", "summary").text
         or d.find_element("id", "status").text.startswith(("bad", "invalid", "unusable", "error")))
    assert driver.find_element("id", "status").text == "", driver.find_element("id", "status").text
    wait(driver, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('figure.hit img')).every(i => i.complete && i.naturalWidth > 0)"))
    return driver.find_elements("css selector", "figure.hit")


def api_search(server, photo, box, k) -> dict:
    files = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
    r = httpx.post(server.url + "/search", files=files, data={"box": ",".join(map(str, box)), "k": str(k)}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def assert_overlay_matches(driver, frame_img, overlay, hit) -> None:
    """The overlay's rectangle is the API's box scaled from the hit's original pixels to the displayed image."""
    img, box = rect(driver, frame_img), rect(driver, overlay)
    sx, sy = img["width"] / hit["width"], img["height"] / hit["height"]
    x0, y0, x1, y1 = hit["box"]
    expected = {"left": img["left"] + x0 * sx, "top": img["top"] + y0 * sy, "width": (x1 - x0) * sx,
                "height": (y1 - y0) * sy}
    for key, value in expected.items():
        assert abs(box[key] - value) <= TOLERANCE, (hit["name"], key, box, expected)


def check_hits(driver, cards, api_hits) -> None:
    assert len(cards) == min(len(api_hits), 20)
    for card, hit in zip(cards, api_hits):
        assert card.get_attribute("data-id") == str(hit["id"])
        assert hit["name"] in card.find_element("css selector", "figcaption").text
        assert_overlay_matches(driver, card.find_element("css selector", ".frame img"),
                               card.find_element("css selector", ".frame .box"), hit)


def test_draw_box_search_and_hit_boxes(browser, served, photos, tmp_path):
    viewport(browser, 1200, 900)
    open_page(browser, served)
    assert browser.find_element("id", "index-info").text == "8 images · preset rootsift-vlad"
    photo = photos / "coffee.jpg"
    pick_photo(browser, photo)
    expected = drag_box(browser, (0.2, 0.25, 0.75, 0.85))
    box = page_box(browser)
    W, H = Image.open(photo).size
    assert all(abs(a - b) <= 1.5 for a, b in zip(box, expected)), (box, expected)
    assert 0 <= box[0] < box[2] <= W and 0 <= box[1] < box[3] <= H
    cards = submit(browser, k=8)
    api = api_search(served, photo, box, 8)
    assert api["hits"][0]["name"] == "coffee.jpg"
    assert cards[0].find_element("css selector", "figcaption").text.startswith("#1")
    check_hits(browser, cards, api["hits"])
    summary = browser.find_element("id", "summary").text
    assert summary.startswith("8 hits in ") and "server" in summary
    # a hit opens large with its box
    cards[0].find_element("css selector", ".frame").click()
    wait(browser, lambda d: d.find_element("id", "viewer").is_displayed()
         and d.execute_script("const i = document.getElementById('viewer-img'); return i.complete && i.naturalWidth > 0"))
    assert_overlay_matches(browser, browser.find_element("id", "viewer-img"), browser.find_element("id", "viewer-box"),
                           api["hits"][0])
    assert "coffee.jpg" in browser.find_element("id", "viewer-caption").text
    browser.find_element("id", "viewer-next").click()
    wait(browser, lambda d: api["hits"][1]["name"] in d.find_element("id", "viewer-caption").text)
    browser.find_element("id", "viewer-close").click()
    assert not browser.find_element("id", "viewer").is_displayed()
    browser.save_screenshot(str(tmp_path / "search-page.png"))


def test_paging_through_hits(browser, served, photos):
    viewport(browser, 1200, 900)
    open_page(browser, served, "?per_page=3")
    pick_photo(browser, photos / "chelsea.jpg")
    cards = submit(browser, k=8)
    assert [c.get_attribute("data-rank") for c in cards] == ["1", "2", "3"]
    assert browser.find_element("id", "page-info").text == "page 1 of 3 (hits 1–3)"
    browser.find_element("id", "next").click()
    browser.find_element("id", "next").click()
    ranks = [c.get_attribute("data-rank") for c in browser.find_elements("css selector", "figure.hit")]
    assert ranks == ["7", "8"] and browser.find_element("id", "next").get_attribute("disabled")
    browser.find_element("id", "prev").click()
    assert browser.find_element("id", "page-info").text == "page 2 of 3 (hits 4–6)"


def test_phone_width_touch_box(browser, served, photos, tmp_path):
    viewport(browser, 390, 844, mobile=True)
    open_page(browser, served)
    assert browser.execute_script("return window.innerWidth") == 390
    photo = photos / "rocket.jpg"
    canvas = pick_photo(browser, photo)
    assert canvas["width"] <= 390 - 2 * 8
    expected = drag_box(browser, (0.3, 0.1, 0.7, 0.9), touch=True)
    box = page_box(browser)
    assert all(abs(a - b) <= 1.5 for a, b in zip(box, expected)), (box, expected)
    cards = submit(browser, k=8)
    api = api_search(served, photo, box, 8)
    assert api["hits"][0]["name"] == "rocket.jpg"
    check_hits(browser, cards, api["hits"])
    # nothing wider than the phone: no sideways scrolling; hits two abreast
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    lefts = sorted({round(rect(browser, c)["left"]) for c in cards})
    assert len(lefts) == 2, lefts
    browser.save_screenshot(str(tmp_path / "search-page-390px.png"))


def test_region_boxes_drawn_where_the_api_says(browser, served_regions, photos, tmp_path):
    """A preset that localises (R-MAC regions, CA-SR): the boxes are regions, not whole images."""
    viewport(browser, 1200, 900)
    open_page(browser, served_regions)
    photo = photos / "coffee.jpg"
    pick_photo(browser, photo)
    drag_box(browser, (0.25, 0.2, 0.8, 0.9))
    box = page_box(browser)
    cards = submit(browser, k=8)
    api = api_search(served_regions, photo, box, 8)
    hits = api["hits"]
    assert hits[0]["name"] == "coffee.jpg" and api["settings"]["rerank"]["method"] == "ca-sr"
    partial = [h for h in hits if h["box"] != [0, 0, h["width"], h["height"]]]
    assert len(partial) == len(hits), [h["box"] for h in hits]
    check_hits(browser, cards, hits)
    # the query canvas dims what lies outside the drawn box
    alpha = browser.execute_script("return document.getElementById('canvas').getContext('2d')"
                                   ".getImageData(2, 2, 1, 1).data[3]")
    assert alpha > 80
    stats = httpx.get(served_regions.url + "/stats").json()
    assert stats["stores_regions"] and "ca-sr" in stats["search_choices"]["rerank"]
    assert stats["model"]["weights"] == stats["model"]["weights_source"] == "random:0"
    assert [c["name"] for c in stats["bytes"]["columns"]] == ["global", "boxes", "regions"]
    screenshot = tmp_path / "region-boxes.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
