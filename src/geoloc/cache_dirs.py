"""Where geoloc keeps what it can compute again: `$GEOLOC_CACHE`, else `~/.cache/geoloc`.

Each kind of cached result has its folder there: `embeddings` (eval/cache.py), `tile_features`
(encoder/tile_features.py), `fingerprints` (index/identity.py).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cached result (not created here)."""
    return Path(os.environ.get("GEOLOC_CACHE", Path.home() / ".cache" / "geoloc")) / kind
