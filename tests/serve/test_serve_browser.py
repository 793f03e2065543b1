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
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=ARGS,
            headless=True,
            viewport={"width": 1200, "height": 760},
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(live_server + "/")
            page.fill("#query", query)
            page.fill("#k", "5")
            page.click("#search-button")
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
