"""geoloc: find the satellite tile a person describes, with a multimodal LLM as retriever.

import geoloc
encoder = geoloc.load_encoder("OpenGVLab/InternVL3_5-1B-HF")   # or a run dir, folder, preset
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_encoder"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import geoloc` (and the CLI's --help) stays free of torch.
    if name == "load_encoder":
        from geoloc.encoder.loading import load_encoder

        return load_encoder
    raise AttributeError(f"module 'geoloc' has no attribute {name!r}")
