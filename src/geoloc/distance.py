"""Great-circle distance: the one haversine of geoloc (benchmark scoring, reports).

The Earth is a sphere of radius 6371 km here, as in the CVG-Text code whose localisation
accuracy (L@50/100/150) the CVG-Text protocol reproduces; reports use the same distances, so
their kilometres agree with the benchmark's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EARTH_RADIUS_KM = 6371.0


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance in km between points given in degrees; broadcasts like numpy.

    Scalars in give a 0-d array out (`float(...)` it for one distance).
    """
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(x, dtype=np.float64)) for x in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    a = np.clip(a, 0.0, 1.0)  # rounding can take it just past 1 for antipodal points
    return 2 * EARTH_RADIUS_KM * np.arctan2(np.sqrt(a), np.sqrt(1 - a))
