"""Pooling on hand-made hidden states: padding side and padding contents must not matter."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from geoloc.encoder.pooling import (
    EosPooling,
    MeanPooling,
    QueryPooling,
    build_pooling,
    last_real_token_index,
)

HIDDEN = 8
LENGTHS = [6, 3, 1, 4]
PAD_VALUE = 1.0e6  # huge, so any leak of a padded position into a result is obvious


def _samples() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, HIDDEN, generator=gen) for n in LENGTHS]


def _padded(
    samples: list[torch.Tensor], side: str, fill: float = PAD_VALUE
) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(s) for s in samples)
    hidden = torch.full((len(samples), longest, HIDDEN), fill)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        span = slice(0, len(s)) if side == "right" else slice(longest - len(s), longest)
        hidden[row, span] = s
        mask[row, span] = 1
    return hidden, mask


def _alone(pool: torch.nn.Module, sample: torch.Tensor) -> torch.Tensor:
    return pool(sample.unsqueeze(0), torch.ones(1, len(sample), dtype=torch.long))[0]


def test_last_real_token_index_right_and_left_padding() -> None:
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_real_token_index(right).tolist() == [2, 4, 0]
    assert last_real_token_index(left).tolist() == [4, 4, 4]
    # bool masks work too
    assert last_real_token_index(right.bool()).tolist() == [2, 4, 0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_eos_pooling_batch_equals_per_sample(side: str) -> None:
    samples = _samples()
    hidden, mask = _padded(samples, side)
    pooled = EosPooling()(hidden, mask)
    assert pooled.shape == (len(samples), HIDDEN)
    for row, sample in enumerate(samples):
        torch.testing.assert_close(pooled[row], sample[-1], rtol=0, atol=0)
        torch.testing.assert_close(pooled[row], _alone(EosPooling(), sample), rtol=0, atol=0)
    assert pooled.abs().max() < PAD_VALUE / 10


@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_pooling_ignores_padding(side: str) -> None:
    samples = _samples()
    hidden, mask = _padded(samples, side)
    pooled = MeanPooling()(hidden, mask)
    for row, sample in enumerate(samples):
        torch.testing.assert_close(pooled[row], sample.mean(dim=0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(pooled[row], _alone(MeanPooling(), sample), rtol=1e-6, atol=1e-6)
    # Padding contents do not matter at all.
    other, _ = _padded(samples, side, fill=-123.0)
    torch.testing.assert_close(MeanPooling()(other, mask), pooled, rtol=0, atol=0)


@pytest.fixture(scope="module")
def query_pool() -> QueryPooling:
    torch.manual_seed(0)
    pool = QueryPooling(HIDDEN, num_queries=3, num_heads=2).eval()
    # Non-trivial norm parameters, so a wrong result cannot hide behind LayerNorm defaults.
    with torch.no_grad():
        pool.norm.weight.uniform_(0.5, 1.5)
        pool.norm.bias.uniform_(-0.5, 0.5)
    return pool


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_query_pooling_batch_equals_per_sample_and_ignores_padding(
    query_pool: QueryPooling, side: str
) -> None:
    samples = _samples()
    hidden, mask = _padded(samples, side)
    pooled = query_pool(hidden, mask)
    assert pooled.shape == (len(samples), HIDDEN)
    assert torch.isfinite(pooled).all()
    for row, sample in enumerate(samples):
        torch.testing.assert_close(pooled[row], _alone(query_pool, sample), rtol=1e-5, atol=1e-5)
    other, _ = _padded(samples, side, fill=-7.0)
    torch.testing.assert_close(query_pool(other, mask), pooled, rtol=1e-5, atol=1e-5)
    # ... while real positions do matter.
    changed = hidden.clone()
    changed[mask.bool()] += 1.0
    assert not torch.allclose(query_pool(changed, mask), pooled, atol=1e-3)


def test_query_pooling_left_equals_right(query_pool: QueryPooling) -> None:
    samples = _samples()
    with torch.no_grad():
        left = query_pool(*_padded(samples, "left"))
        right = query_pool(*_padded(samples, "right"))
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)


def test_build_pooling() -> None:
    assert isinstance(build_pooling("eos", 8), EosPooling)
    assert isinstance(build_pooling("mean", 8), MeanPooling)
    query = build_pooling("query", 8, num_queries=5, num_heads=2)
    assert isinstance(query, QueryPooling)
    assert query.queries.shape == (5, 8)
    with pytest.raises(ValueError, match="eos, mean, query"):
        build_pooling("max", 8)
    with pytest.raises(ValueError, match="divisible"):
        build_pooling("query", 10, num_heads=4)
