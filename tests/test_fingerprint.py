"""The one tensor hash behind the embedding cache, the index's model identity and the tile cache."""

from __future__ import annotations

import torch

from geoloc.fingerprint import tensors_digest


def test_same_weights_same_hash_whatever_the_order_and_any_change_shows() -> None:
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(4)
    first = tensors_digest([("a", a), ("b", b)])
    assert first == tensors_digest([("b", b.clone()), ("a", a.clone())])
    assert first != tensors_digest([("a", a), ("b", b * 2)])  # a weight
    assert first != tensors_digest([("a", a), ("c", b)])  # a name
    assert first != tensors_digest([("a", a.double()), ("b", b)])  # a precision
    assert first != tensors_digest([("a", a), ("b", b)], prefix=b"settings")


def test_bfloat16_and_packed_int8_weights_hash() -> None:
    bf16 = tensors_digest([("w", torch.ones(3, dtype=torch.bfloat16))])
    assert bf16 != tensors_digest([("w", torch.full((3,), 2.0, dtype=torch.bfloat16))])
    packed = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8)
    assert tensors_digest([("w", packed)]) == tensors_digest([("w", packed.clone())])
