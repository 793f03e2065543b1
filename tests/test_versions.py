"""The tested release ranges: one statement of them, kept in step with pyproject and constraints."""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.version import Version

from geoloc import versions
from geoloc.versions import TESTED, UntestedVersionWarning, untested_versions, warn_if_untested

ROOT = Path(__file__).parents[1]


def _floors() -> dict[str, str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for requirement in dependencies:
        match = re.fullmatch(r"([\w-]+)>=([\w.]+)(,<[\w.]+)?", requirement)
        if match:
            floors[match.group(1)] = match.group(2)
    return floors


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line)


def test_the_floors_are_the_pinned_releases_the_main_pass_tests() -> None:
    floors, pins = _floors(), _pins()
    for name, (low, high) in TESTED.items():
        assert floors[name] == low == pins[name], name  # pyproject's floor is what CI pins
        assert Version(low) <= Version(high), name


def test_outside_the_range_is_named_with_the_versions() -> None:
    low, high = TESTED["transformers"]
    assert untested_versions({"transformers": low, "peft": TESTED["peft"][1]}) == []
    outside = untested_versions({"transformers": "5.99.0", "peft": "0.1.0"})
    assert outside == [
        f"transformers 5.99.0 (tested: {low} to {high})",
        f"peft 0.1.0 (tested: {TESTED['peft'][0]} to {TESTED['peft'][1]})",
    ]


def test_the_warning_comes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "_warned", False)
    outside = "transformers 5.99.0 (tested: 5.18.0 to 5.24.0)"
    monkeypatch.setattr(versions, "untested_versions", lambda: [outside])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_untested()
        warn_if_untested()
    assert len(caught) == 1 and caught[0].category is UntestedVersionWarning
    assert outside in str(caught[0].message)
