"""The HTML report: every figure inlined and written beside the page, and it renders in a browser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoloc.cli import main
from geoloc.study.report import REPORT_FILE, build_report, haversine_km

CHROMIUM = Path("/usr/bin/chromium")
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" data-file="([^"]+)">')


def _figures(page: Path) -> dict[str, bytes]:
    """{file name: inlined PNG bytes} of every figure in the page."""
    return {name: base64.b64decode(data) for data, name in IMG.findall(page.read_text(encoding="utf-8"))}


def _check_figures(page: Path, expected: set[str]) -> None:
    figures = _figures(page)
    assert set(figures) == expected
    for name, png in figures.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert (page.parent / name).read_bytes() == png  # the same figure beside the page
    assert page.read_text().count("<img") == len(expected)  # nothing else to fetch


def test_haversine_is_right_on_known_distances() -> None:
    assert haversine_km(0.0, 0.0, 0.0, 1.0) == pytest.approx(111.195, abs=0.01)
    assert haversine_km(40.7128, -74.0060, 51.5074, -0.1278) == pytest.approx(5570, rel=0.01)  # NYC-London


def test_sweep_report_has_table_plot_curves_and_retrieval_grid(resumed_sweep: dict, tmp_path: Path) -> None:
    out = resumed_sweep["out"]
    page = build_report(out, tmp_path / "sweep-report")
    assert page == tmp_path / "sweep-report" / REPORT_FILE
    _check_figures(page, {"results.png", "curves.png", "retrieval.png"})
    text = page.read_text()
    for point in resumed_sweep["sweep"].points:  # each run is a row of the table, named by its values
        assert f'<td class="name">{point.values["loss.direction"]}</td>' in text
    assert "2 of 2 runs finished" in text
    assert "Distance from the true place to the top-1 tile" in text  # the synthetic city has lat/lon
    assert text.count('<tr class="best">') == 1


def test_run_report_from_the_command(resumed_sweep: dict, capsys: pytest.CaptureFixture) -> None:
    run = resumed_sweep["out"] / "runs" / resumed_sweep["sweep"].points[1].name
    assert main(["report", str(run), "--queries", "3"]) == 0
    page = run / "report" / REPORT_FILE
    assert str(page) in capsys.readouterr().out
    _check_figures(page, {"curves.png", "retrieval.png"})
    text = page.read_text()
    assert "validation (best)" in text and "test split" in text  # the recall table's two rows
    assert "symmetric" in text  # the set-up names the loss direction
    # The retrieval grid has one row per query: a taller figure for more queries.
    height = Image.open(run / "report" / "retrieval.png").size[1]
    assert main(["report", str(run), "--queries", "1"]) == 0
    assert Image.open(run / "report" / "retrieval.png").size[1] < height


def test_a_folder_that_is_no_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a sweep folder" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium on this machine")
def test_the_page_renders_in_headless_chromium(resumed_sweep: dict, tmp_path: Path) -> None:
    page = build_report(resumed_sweep["out"], tmp_path / "report")
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        f"--screenshot={shot}", "--window-size=1280,2000", page.resolve().as_uri(),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    image = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
    assert image.shape[:2] == (2000, 1280)
    # A rendered page, not a blank one: many rows hold ink, and the figures bring colour.
    ink_rows = (image.min(axis=(1, 2)) < 128).mean()
    assert ink_rows > 0.3
    saturation = image.max(axis=2) - image.min(axis=2)
    assert (saturation > 60).mean() > 0.005
    shutil.rmtree(profile, ignore_errors=True)
