"""One contrastive training step's gradients: plain, or with gradient caching; on one process or many.

Plain: both sides of the batch go forward with gradients, InfoNCE, backward. Memory grows with
the batch, and the batch is the number of negatives.

Gradient caching (GradCache, Gao et al., 2021) takes any batch within the memory of one chunk:
  1. encode every chunk WITHOUT gradients, remembering the random state each chunk started with;
  2. compute the loss on those embeddings and its gradient with respect to them;
  3. encode each chunk again WITH gradients (same random state: same dropout) and back-propagate
     the cached embedding gradient into the weights.
By the chain rule the weights get exactly the plain loss's gradient.

On several processes every process encodes its share of the global batch; embeddings are gathered
with gradients (see distributed.py) and each process scores its own rows against all columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from geoloc.train.distributed import average_gradients, gather_with_grad, pad_rows, sum_across
from geoloc.train.loss import InfoNCE
from geoloc.world import World

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder

Inputs = dict[str, torch.Tensor]


class PairEncoder(nn.Module):
    """Both sides of a batch in one forward call: the module DistributedDataParallel wraps."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, text_inputs: Inputs, image_inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(text_inputs), self.encoder(image_inputs)


def split_inputs(inputs: Inputs, chunk: int) -> list[Inputs]:
    """Cut every tensor of a batch into row chunks (token ids, masks, pixels, features alike)."""
    rows = next(iter(inputs.values())).shape[0]
    return [{k: v[start : start + chunk] for k, v in inputs.items()} for start in range(0, rows, chunk)]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class ContrastiveStep:
    """Accumulates into `.grad` the gradient of the global batch's loss; returns that loss.

    `model` is a PairEncoder, wrapped in DistributedDataParallel when the world has several
    processes. DDP averages gradients over processes, so each process back-propagates its share
    of the loss times the world size: the average of those is the gradient of the global loss.
    Parameters outside DDP (the learnable temperature, and the adapters when the language model
    is sharded with FSDP instead) are averaged here, after the backward passes: `averaged`.

    `real_rows`: when a process's share was padded with filler rows to match the other
    processes' (so that every process runs the same passes, as FSDP needs), only the first
    `real_rows` count; the fillers' embeddings are dropped, so they get no gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: InfoNCE,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]],
        device: torch.device,
        world: World | None = None,
        chunk: int = 0,
        averaged: list[nn.Parameter] | None = None,
    ):
        self.model, self.loss_fn, self.autocast = model, loss_fn, autocast
        self.device = device
        self.world = world or World()
        self.chunk = chunk
        self.averaged = [p for p in loss_fn.parameters() if p.requires_grad] + list(averaged or [])

    def _loss(self, text: torch.Tensor, image: torch.Tensor, offset: int, total_rows: int) -> torch.Tensor:
        text_all = gather_with_grad(text, self.world)
        image_all = gather_with_grad(image, self.world)
        return self.loss_fn(text, image, text_all, image_all, offset=offset, total_rows=total_rows)

    def __call__(
        self,
        text_inputs: Inputs,
        image_inputs: Inputs,
        offset: int = 0,
        total_rows: int = 0,
        real_rows: int | None = None,
    ) -> float:
        """This process's rows of the batch; `offset` and `total_rows` place them in the global batch."""
        rows = next(iter(text_inputs.values())).shape[0]
        real = rows if real_rows is None else real_rows
        total_rows = total_rows or real
        if 0 < self.chunk < rows:
            loss = self._cached(text_inputs, image_inputs, offset, total_rows, real)
        else:
            with self.autocast():
                text, image = self.model(text_inputs, image_inputs)
            loss = self._loss(text[:real], image[:real], offset, total_rows)
            (loss * self.world.size).backward()
        average_gradients(self.averaged, self.world)
        return float(sum_across(loss.detach(), self.world))

    def _cached(
        self, text_inputs: Inputs, image_inputs: Inputs, offset: int, total_rows: int, real: int
    ) -> torch.Tensor:
        text_chunks = split_inputs(text_inputs, self.chunk)
        image_chunks = split_inputs(image_inputs, self.chunk)
        # 1. Embeddings without gradients; each chunk's random state is kept to replay its dropout.
        states, texts, images = [], [], []
        with torch.no_grad():
            for text_chunk, image_chunk in zip(text_chunks, image_chunks, strict=True):
                states.append(_rng_state(self.device))
                with self.autocast():
                    text, image = self.model(text_chunk, image_chunk)
                texts.append(text)
                images.append(image)
        # 2. The loss on the whole batch, and its gradient with respect to the embeddings
        #    (zero for filler rows).
        encoded = sum(t.shape[0] for t in texts)
        text = torch.cat(texts)[:real].requires_grad_()
        image = torch.cat(images)[:real].requires_grad_()
        loss = self._loss(text, image, offset, total_rows)
        (loss * self.world.size).backward()
        assert text.grad is not None and image.grad is not None  # both fed the loss
        text_grad, image_grad = pad_rows(text.grad, encoded), pad_rows(image.grad, encoded)
        # 3. Each chunk again with gradients, back-propagating its share of the cached gradient.
        #    Under DDP only the last backward synchronises gradients across processes.
        no_sync = getattr(self.model, "no_sync", None)
        last = len(text_chunks) - 1
        for n, (text_chunk, image_chunk) in enumerate(zip(text_chunks, image_chunks, strict=True)):
            _set_rng_state(states[n], self.device)
            rows = slice(n * self.chunk, n * self.chunk + next(iter(text_chunk.values())).shape[0])
            sync = contextlib.nullcontext() if no_sync is None or n == last else no_sync()
            with sync:
                with self.autocast():
                    text_part, image_part = self.model(text_chunk, image_chunk)
                torch.autograd.backward([text_part, image_part], [text_grad[rows], image_grad[rows]])
        return loss
