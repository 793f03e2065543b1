"""The contrastive step: gradient caching gives the plain loss's gradients; shares of a batch add up."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.tuning import TuningConfig
from geoloc.train.loss import InfoNCE
from geoloc.train.step import ContrastiveStep, PairEncoder, split_inputs
from geoloc.world import World


def _synthetic_batch(encoder: MllmEncoder, batch: int, text_words: int, seed: int) -> tuple[dict, dict]:
    """(text inputs, image inputs) of `batch` pairs: random words and random-noise tiles."""
    rng = np.random.default_rng(seed)
    words = ["red", "roof", "road", "park", "tower", "river", "bridge", "square", "church", "lot"]
    texts = [" ".join(rng.choice(words, size=text_words)) for _ in range(batch)]
    size = encoder.image_size
    tiles = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(batch)]
    return encoder.text_inputs(texts), encoder.image_inputs(tiles)


def _setup(preset: str, dropout: float) -> tuple[MllmEncoder, InfoNCE, dict, dict]:
    torch.manual_seed(0)
    tuning = TuningConfig(strategy="lora", rank=4, alpha=8.0, dropout=dropout, targets="paper")
    encoder = MllmEncoder.load(preset, spec_overrides={"tuning": tuning, "pooling": "query"})
    encoder.train()
    # Non-zero B matrices, so that gradients reach every adapter matrix.
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    loss_fn = InfoNCE(0.05, learnable=True, direction="symmetric")
    text, image = _synthetic_batch(encoder, batch=6, text_words=12, seed=1)
    return encoder, loss_fn, text, image


def _collect(encoder: MllmEncoder, loss_fn: InfoNCE) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    grads["log_scale"] = loss_fn.log_scale.grad.clone()
    return grads


def _step_gradients(preset: str, chunk: int, dropout: float) -> tuple[float, dict[str, torch.Tensor]]:
    encoder, loss_fn, text, image = _setup(preset, dropout)
    step = ContrastiveStep(
        PairEncoder(encoder), loss_fn, contextlib.nullcontext, torch.device("cpu"), chunk=chunk
    )
    torch.manual_seed(123)
    loss = step(text, image)
    return loss, _collect(encoder, loss_fn)


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    assert any("vision" in n for n in want) and any("lora_A" in n for n in want)
    assert all(want[n].abs().sum() > 0 for n in want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("preset", ["tiny-smolvlm", "tiny-internvl"])
def test_gradient_caching_equals_the_plain_gradients(preset: str) -> None:
    plain_loss, plain = _step_gradients(preset, chunk=0, dropout=0.0)
    cached_loss, cached = _step_gradients(preset, chunk=4, dropout=0.0)  # chunks of 4 and 2 pairs
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    _assert_same(cached, plain)


def test_gradient_caching_replays_each_chunks_dropout() -> None:
    # Reference: the same chunks, encoded with gradients in one graph, in the same random order.
    encoder, loss_fn, text, image = _setup("tiny-smolvlm", dropout=0.3)
    torch.manual_seed(123)
    parts = [
        PairEncoder(encoder)(t, i) for t, i in zip(split_inputs(text, 4), split_inputs(image, 4), strict=True)
    ]
    reference_loss = loss_fn(torch.cat([t for t, _ in parts]), torch.cat([i for _, i in parts]))
    reference_loss.backward()
    reference = _collect(encoder, loss_fn)
    cached_loss, cached = _step_gradients("tiny-smolvlm", chunk=4, dropout=0.3)
    assert cached_loss == pytest.approx(float(reference_loss.detach()), abs=1e-5)
    _assert_same(cached, reference)


def test_shares_of_a_batch_sum_to_its_loss() -> None:
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
    for direction in ("text_to_image", "symmetric"):
        loss = InfoNCE(0.05, direction=direction)
        whole = loss(text, image)
        shares = 0.0
        for rank in range(3):
            rows, offset = World(rank=rank, size=3).slice_of(list(range(7)))
            part = slice(rows[0], rows[-1] + 1)
            shares += loss(text[part], image[part], text, image, offset=offset, total_rows=7)
        torch.testing.assert_close(shares, whole)


def test_world_slices_cover_a_batch_once_in_order() -> None:
    batch = list(range(10, 21))  # 11 rows over 3 processes: 4, 4, 3
    pieces = [World(rank=r, size=3).slice_of(batch) for r in range(3)]
    assert [len(p) for p, _ in pieces] == [4, 4, 3]
    assert [o for _, o in pieces] == [0, 4, 8]
    assert sum((p for p, _ in pieces), []) == batch


def test_split_inputs_cuts_every_tensor_by_rows() -> None:
    inputs = {"input_ids": torch.arange(10).reshape(5, 2), "pixel_values": torch.zeros(5, 1, 3, 4, 4)}
    chunks = split_inputs(inputs, 2)
    assert [c["input_ids"].shape[0] for c in chunks] == [2, 2, 1]
    assert all(c["pixel_values"].shape[0] == c["input_ids"].shape[0] for c in chunks)
    assert torch.equal(torch.cat([c["input_ids"] for c in chunks]), inputs["input_ids"])


@pytest.mark.parametrize("chunk", [0, 4])
def test_filler_rows_change_nothing(chunk: int) -> None:
    # A share padded with filler rows (as FSDP needs) gives the unpadded share's loss and gradients.
    encoder, loss_fn, text, image = _setup("tiny-smolvlm", dropout=0.0)
    step = ContrastiveStep(
        PairEncoder(encoder), loss_fn, contextlib.nullcontext, torch.device("cpu"), chunk=chunk
    )
    real = {k: v[:5] for k, v in text.items()}, {k: v[:5] for k, v in image.items()}
    want_loss = step(*real)
    want = _collect(encoder, loss_fn)
    encoder.zero_grad(set_to_none=True)
    loss_fn.zero_grad(set_to_none=True)
    padded = [{k: torch.cat([v[:5], v[:1]]) for k, v in side.items()} for side in real]  # 6 rows
    got_loss = step(*padded, real_rows=5)
    assert got_loss == pytest.approx(want_loss, abs=1e-6)
    _assert_same(_collect(encoder, loss_fn), want)


def test_padded_shares_are_equal_and_mark_the_real_rows() -> None:
    batch = [10, 11, 12, 13, 14]
    shares = [World(rank=r, size=2).padded_slice_of(batch) for r in range(2)]
    assert shares == [([10, 11, 12], 0, 3), ([13, 14, 13], 3, 2)]
    # A batch smaller than the world: the empty share borrows a row, and counts none.
    assert World(rank=1, size=2).padded_slice_of([7]) == ([7], 1, 0)
