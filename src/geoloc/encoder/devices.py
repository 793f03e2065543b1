"""Where an encoder's weights live and in what dtype: names a user gives, as torch's objects."""

from __future__ import annotations

import torch

from geoloc.errors import GeolocError

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str) -> torch.dtype:
    """The torch dtype a dtype name (float32, bfloat16, float16) stands for; an unknown one is refused."""
    if dtype not in DTYPES:
        raise GeolocError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GeolocError(f"device {device!r} asked for, but no CUDA device is available")
    return torch.device(device)
