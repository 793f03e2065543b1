"""The web page in headless Chromium: type a query, see thumbnails and markers on the map."""

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium (/usr/bin/chromium) is not installed"
)


def test_query_shows_results_and_markers(live_server: str, served_index, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    query = "a red square building with a pond on its left"
    expected = [h.key for h in served_index.search(query, k=5)]
    with sync_playwright() as p:
        browser = _launch(p, tmp_path)
        try:
            page, errors = _search(browser, live_server, query)
            page.wait_for_selector(".result >> nth=4")
            page.wait_for_function("document.querySelectorAll('.rank-marker').length === 5")
            assert page.eval_on_selector_all(".result", "els => els.map(e => e.dataset.key)") == expected
            assert page.inner_text(".result >> nth=0").startswith("#1")
            # Thumbnails really loaded from /tiles.
            page.wait_for_function(
                "[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert "5 tiles in" in page.inner_text("#status")
            # No network here: the map falls back to its plain offline background.
            assert "offline" in page.get_attribute("#map", "class")
            page.screenshot(path=str(tmp_path / "search.png"))

            page.click("#explain-button")
            page.wait_for_function(
                "document.querySelectorAll('.result .explanation').length === 5", timeout=60_000
            )
            page.screenshot(path=str(tmp_path / "explain.png"))

            page.fill("#query", "   ")
            page.click("#search-button")
            page.wait_for_selector("#status.error")
            assert errors == []
        finally:
            browser.close()
    assert (tmp_path / "search.png").stat().st_size > 10_000
    print(f"screenshots: {tmp_path / 'search.png'} and {tmp_path / 'explain.png'}")


def _search(browser, live_server: str, query: str) -> tuple:
    """A new page on the server, with `query` searched for its top 5; the page's script errors."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_server + "/")
    page.fill("#query", query)
    page.fill("#k", "5")
    page.click("#search-button")
    return page, errors


def _launch(p, tmp_path: Path):
    return p.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=str(CHROMIUM),
        args=ARGS,
        headless=True,
        viewport={"width": 1200, "height": 760},
    )


def test_map_draws_footprints_tile_images_and_a_heat_map(
    live_server: str, served_index, tmp_path: Path
) -> None:
    """The map at the places: footprints outlined, tile images over them, the gallery's heat map;
    a click zooms to the result. Checked in the DOM and in the screenshot's pixels."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    query = "a red square building with a pond on its left"
    hits = served_index.search(query, k=5)
    with sync_playwright() as p:
        browser = _launch(p, tmp_path)
        try:
            page, errors = _search(browser, live_server, query)
            page.wait_for_function("document.querySelectorAll('path.footprint').length === 5")
            overlays = "[...document.querySelectorAll('img.tile-overlay')]"
            page.wait_for_function(
                f"{overlays}.length === 5 && {overlays}.every(i => i.complete && i.naturalWidth > 0)"
            )
            # One heat cell per gallery tile (40 tiles, each with its footprint), in several colours.
            page.wait_for_function("document.querySelectorAll('path.heat-cell').length === 40")
            fills = page.eval_on_selector_all("path.heat-cell", "els => els.map(e => e.getAttribute('fill'))")
            assert len(set(fills)) > 10
            assert "offline" in page.get_attribute("#map", "class")  # the grid background, no network
            overview = tmp_path / "overview.png"
            page.screenshot(path=str(overview))

            zoom_before = page.evaluate("map.getZoom()")
            page.click(".result >> nth=0")
            page.wait_for_function(f"map.getZoom() > {zoom_before}")
            page.wait_for_timeout(400)  # the zoom animation
            centre = page.evaluate("[map.getCenter().lat, map.getCenter().lng]")
            ring = hits[0].footprint
            lons, lats = [p[0] for p in ring], [p[1] for p in ring]
            assert min(lats) <= centre[0] <= max(lats) and min(lons) <= centre[1] <= max(lons)
            # Where the top tile's footprint is on the screen, in page pixels.
            box = page.evaluate(
                """([s, w, n, e]) => {
                    const r = document.getElementById('map').getBoundingClientRect();
                    const a = map.latLngToContainerPoint([n, w]), b = map.latLngToContainerPoint([s, e]);
                    return [r.left + a.x, r.top + a.y, r.left + b.x, r.top + b.y];
                }""",
                [min(lats), min(lons), max(lats), max(lons)],
            )
            zoomed = tmp_path / "zoomed.png"
            page.screenshot(path=str(zoomed))
            assert errors == []
        finally:
            browser.close()

    shot = np.asarray(Image.open(zoomed).convert("RGB")).astype(int)
    left, top, right, bottom = (round(v) for v in box)
    assert right - left > 100 and bottom - top > 100  # zoomed in: the tile is large on the screen
    # The footprint's outline is drawn: magenta pixels along its edges.
    edges = [shot[top - 3 : top + 4, left:right], shot[bottom - 3 : bottom + 4, left:right]]
    edge = np.concatenate(edges, axis=1)
    magenta = (edge[..., 0] > 200) & (edge[..., 1] < 90) & (edge[..., 2] > 200)
    assert magenta.sum() > (right - left)  # most of both edges
    # The tile's own image is laid over its footprint: inside the outline (away from the edge
    # stroke and the numbered marker in the middle) the screenshot shows the tile's pixels.
    inner = shot[top + 8 : bottom - 8, left + 8 : right - 8]
    tile = Image.open(served_index.image_path(hits[0].key)).convert("RGB")
    tile = np.asarray(tile.resize((right - left - 16, bottom - top - 16), Image.NEAREST)).astype(int)
    h, w = inner.shape[:2]
    keep = np.ones((h, w), bool)
    keep[int(h * 0.35) : int(h * 0.65), int(w * 0.35) : int(w * 0.65)] = False  # the marker
    difference = np.abs(inner - tile[:h, :w]).mean(axis=2)[keep]
    assert np.median(difference) < 20, f"no tile image over its footprint ({np.median(difference)})"
    print(f"screenshots: {overview} and {zoomed}")


def test_a_drawn_rectangle_limits_the_search_to_it(live_server: str, served_index, tmp_path: Path) -> None:
    """Draw area, drag on the map, search: the results are the library's top k inside the box."""
    from playwright.sync_api import sync_playwright

    from geoloc.index.region import Region

    query = "a red square building with a pond on its left"
    with sync_playwright() as p:
        browser = _launch(p, tmp_path)
        try:
            page, errors = _search(browser, live_server, query)
            page.wait_for_selector(".result >> nth=4")
            box = page.locator("#map").bounding_box()
            page.click("#area-button")
            page.mouse.move(box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.15)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6, steps=5)
            page.mouse.up()
            page.wait_for_selector("path.search-area")
            bounds = page.evaluate(
                "(b => [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()])(area.getBounds())"
            )
            expected = [h.key for h in served_index.search(query, 5, Region.bbox(*bounds))]
            assert 0 < len(expected) and expected != [h.key for h in served_index.search(query, 5)]
            page.click("#search-button")
            page.wait_for_function(
                "keys => JSON.stringify([...document.querySelectorAll('.result')].map(e => e.dataset.key))"
                " === JSON.stringify(keys)",
                arg=expected,
            )
            page.screenshot(path=str(tmp_path / "area.png"))
            page.click("#clear-area-button")
            assert page.locator("path.search-area").count() == 0
            assert errors == []
        finally:
            browser.close()
    print(f"screenshot: {tmp_path / 'area.png'}")


def test_the_page_asks_for_the_token_once(served_index, serve_app, tmp_path: Path) -> None:
    """Against a server with a token: one prompt, then searches, the heat map and the tile
    images (fetched with the token) all work."""
    from playwright.sync_api import sync_playwright

    from geoloc.serve.app import create_app

    token = "page-token-0123456789abcdef"
    query = "a red square building with a pond on its left"
    with serve_app(create_app(served_index, token=token)) as url, sync_playwright() as p:
        browser = _launch(p, tmp_path)
        try:
            page = browser.new_page()
            prompts: list[str] = []
            page.on("dialog", lambda dialog: (prompts.append(dialog.message), dialog.accept(token)))
            page.goto(url + "/")
            for _ in range(2):
                page.fill("#query", query)
                page.fill("#k", "5")
                page.click("#search-button")
                images = "[...document.querySelectorAll('.result img')]"
                page.wait_for_function(
                    f"{images}.length === 5 && {images}.every(i => i.complete && i.naturalWidth > 0)"
                )
                page.wait_for_function("document.querySelectorAll('path.heat-cell').length === 40")
            assert len(prompts) == 1 and "access token" in prompts[0]
            keys = page.eval_on_selector_all(".result", "els => els.map(e => e.dataset.key)")
            assert keys == [h.key for h in served_index.search(query, k=5)]
        finally:
            browser.close()


# The four quadrants of the rotated raster: top-left, top-right, bottom-right, bottom-left.
QUADRANTS = ((230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30))
OFFLINE_BACKGROUND = (238, 241, 230)  # style.css: #map.offline


def _rotated_index(folder: Path):
    """A one-tile index cut from a GeoTIFF whose geotransform is rotated by 30 degrees, its four
    quadrants in the QUADRANTS colours."""
    import numpy as np
    import rasterio
    from affine import Affine

    from geoloc.geodata.raster import TilingSettings, cut_raster
    from geoloc.index.build import build_index
    from geoloc.index.search import SearchIndex

    side = 200
    pixels = np.zeros((3, side, side), np.uint8)
    half = side // 2
    for (rows, cols), colour in zip(
        [(slice(0, half), slice(0, half)), (slice(0, half), slice(half, side)),
         (slice(half, side), slice(half, side)), (slice(half, side), slice(0, half))],
        QUADRANTS, strict=True,
    ):  # fmt: skip
        pixels[:, rows, cols] = np.array(colour, np.uint8)[:, None, None]
    transform = Affine.translation(583_000, 4_507_000) @ Affine.rotation(30) @ Affine.scale(0.5, -0.5)
    raster = folder / "rotated.tif"
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8"}
    with rasterio.open(raster, "w", crs="EPSG:32618", transform=transform, **profile) as dst:
        dst.write(pixels)
    settings = TilingSettings(tile_m=side * 0.5, px=64)
    result = cut_raster(raster, folder / "gallery", settings, show_progress=False)
    build_index("tiny-smolvlm", result.manifest, folder / "index")
    return SearchIndex.open(folder / "index")


def _polar_ring() -> tuple[list[list[float]], list[list[float]]]:
    """A 100 km EPSG:3413 tile's footprint as `geoloc tiles` writes it, and its image's corners
    (top-left, top-right, bottom-right, bottom-left) in lon / lat."""
    from pyproj import Transformer

    from geoloc.geodata.footprint import densified, make_ring

    to_lonlat = Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True).transform
    x0, y0, side = 800_000, -1_800_000, 100_000  # east Greenland, about 21 W 72 N
    window = [(x0, y0), (x0, y0 - side), (x0 + side, y0 - side), (x0 + side, y0)]  # as raster.py lists them
    ring = make_ring(densified(window, to_lonlat))
    return ring, [list(to_lonlat(*window[k])) for k in (0, 3, 2, 1)]


def _median_colour(shot, x: float, y: float) -> tuple[int, ...]:
    import numpy as np

    patch = shot[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3].reshape(-1, 3)
    return tuple(int(v) for v in np.median(patch, axis=0))


def test_a_rotated_tile_is_drawn_inside_its_footprint(serve_app, tmp_path: Path) -> None:
    """A raster with a rotated geotransform: the tile's image lies inside its footprint, each
    corner of the image on its corner of the footprint, and nothing (image or heat cell) fills
    the footprint's bounding box outside it. A tile across the antimeridian has its marker there."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from geoloc.serve.app import create_app

    index = _rotated_index(tmp_path)
    assert len(index) == 1
    ring = index.stored.tiles.footprint[0]
    with serve_app(create_app(index)) as url, sync_playwright() as p:
        browser = _launch(p, tmp_path)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            page.fill("#query", "a red square")
            page.fill("#k", "1")
            page.click("#search-button")
            page.wait_for_function("document.querySelectorAll('path.heat-cell').length === 1")
            overlays = "[...document.querySelectorAll('img.tile-overlay')]"
            page.wait_for_function(f"{overlays}.some(i => i.complete && i.naturalWidth > 0)")
            zoom_before = page.evaluate("map.getZoom()")
            page.click(".result >> nth=0")
            page.wait_for_function(f"map.getZoom() > {zoom_before}")
            page.wait_for_timeout(400)  # the zoom animation
            page.evaluate("map.closePopup()")
            # The footprint's corners on the page: the ring starts at the image's top-left corner
            # and runs counter-clockwise (top-left, bottom-left, bottom-right, top-right).
            corners = page.evaluate(
                """ring => {
                    const r = document.getElementById('map').getBoundingClientRect();
                    return ring.slice(0, 4).map(([lon, lat]) => {
                        const p = map.latLngToContainerPoint([lat, lon]);
                        return [r.left + p.x, r.top + p.y];
                    });
                }""",
                ring,
            )
            shot_path = tmp_path / "rotated.png"
            page.screenshot(path=str(shot_path))

            # A tile across the antimeridian: its centre is written in [-180, 180], its footprint
            # runs on past 180; the marker sits inside the footprint, not a world away.
            across = [[179.999, -40.001], [180.001, -40.001], [180.001, -39.999], [179.999, -39.999]]
            marker_lon = page.evaluate(
                """([ring, url]) => {
                    showResults([{rank: 1, score: 0.5, key: 'across.png', lat: -40, lon: -179.9995,
                                  group: 'a', footprint: ring, tile_url: url}]);
                    return markers['across.png'].getLatLng().lng;
                }""",
                [[*across, across[0]], f"/tiles/{index.stored.tiles.key[0]}"],
            )
            assert marker_lon == pytest.approx(180.0005)
            # A 100 km tile in EPSG:3413 (turned about 24 degrees, edges densified to 128 points):
            # the image's corners are the footprint's, from its first point or, for a ring that
            # starts mid-edge, from the edge that runs most nearly east.
            polar, expected_corners = _polar_ring()
            mid_edge = [*polar[5:-1], *polar[:6]]
            for ring_given in (polar, mid_edge):
                found = page.evaluate("ring => imageCorners(ring)", ring_given)
                assert np.allclose(found, expected_corners, atol=1e-6), (found, expected_corners)
            assert errors == []
        finally:
            browser.close()

    shot = np.asarray(Image.open(shot_path).convert("RGB")).astype(int)
    points = np.array(corners)
    centre = points.mean(axis=0)
    assert np.ptp(points[:, 0]) > 200  # zoomed in: the tile is large on the screen
    # Near each corner, inside the footprint: that corner's quadrant of the image.
    for corner, expected in zip(points[[0, 3, 2, 1]], QUADRANTS, strict=True):
        x, y = corner + 0.2 * (centre - corner)
        seen = _median_colour(shot, x, y)
        assert max(abs(a - b) for a, b in zip(seen, expected, strict=True)) < 40, (seen, expected)
    # The corners of the footprint's bounding box lie outside the rotated footprint: only the
    # map's background there, no image and no heat cell.
    low, high = points.min(axis=0), points.max(axis=0)
    for box_corner in ((low[0], low[1]), (high[0], low[1]), (high[0], high[1]), (low[0], high[1])):
        x, y = np.array(box_corner) + 0.05 * (centre - np.array(box_corner))
        seen = _median_colour(shot, x, y)
        assert max(abs(a - b) for a, b in zip(seen, OFFLINE_BACKGROUND, strict=True)) < 25, seen
    print(f"screenshot: {shot_path}")
