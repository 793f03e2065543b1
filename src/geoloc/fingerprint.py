"""Hashes of tensors: the one way geoloc fingerprints weights (embedding cache, index identity,
tile-feature cache).

A tensor is hashed by its name, dtype and raw bytes, so a changed weight, name or precision gives
another hash and a moved or reloaded copy of the same weights gives the same one.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from typing import Any

import torch


def update_with_tensors(digest: Any, named: Iterable[tuple[str, Any]]) -> None:
    """Feed (name, tensor) pairs into a hashlib digest, in name order."""
    for name, tensor in sorted(named, key=lambda item: item[0]):
        digest.update(name.encode())
        if not isinstance(tensor, torch.Tensor) or tensor.is_quantized:
            # int8 layers keep packed weights (not plain tensors): hash their serialised form.
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            digest.update(buffer.getvalue())
            continue
        data = tensor.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
            data = data.view(torch.int16)
        digest.update(str(data.dtype).encode())
        digest.update(data.numpy().tobytes())


def tensors_digest(named: Iterable[tuple[str, Any]], digest_size: int = 20, prefix: bytes = b"") -> str:
    """The hex digest of `prefix` and (name, tensor) pairs."""
    digest = hashlib.blake2b(digest_size=digest_size)
    digest.update(prefix)
    update_with_tensors(digest, named)
    return digest.hexdigest()
