"""One haversine: the CVG-Text protocol and the reports measure kilometres alike."""

from __future__ import annotations

import math

import pytest

from geoloc.distance import EARTH_RADIUS_KM, haversine_km


def test_one_degree_of_meridian_is_the_sphere_of_6371_km() -> None:
    assert EARTH_RADIUS_KM == 6371.0
    assert float(haversine_km(0, 0, 1, 0)) == pytest.approx(6371.0 * math.pi / 180, rel=1e-12)


def test_reports_and_the_benchmark_protocol_use_the_same_distance() -> None:
    """Before: the report used a 6371.0088 km Earth and the CVG-Text protocol 6371 km."""
    from geoloc.eval import protocols
    from geoloc.study import report

    for points in [(40.7128, -74.006, 40.7306, -73.9352), (35.6762, 139.6503, -27.4698, 153.0251)]:
        assert float(report.haversine_km(*points)) == pytest.approx(
            float(protocols.haversine_km(*points)), rel=1e-12
        )
