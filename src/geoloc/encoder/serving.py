"""Serving: a loaded encoder (MLLM or dual) made fast for answering queries.

    encoder = load_for_serving("runs/internvl", precision="int8")   # merged adapters, int8 LLM
    queries = QueryEncoder(encoder)                                  # set up once
    vector = queries.encode("a red building by a pond")             # one (dim,) float32 vector

Three independent speed-ups, each a function on an already loaded encoder:

- `merge_adapters`: LoRA / DoRA deltas are folded into the base weights (peft's
  `merge_and_unload`), so every adapted layer is one matrix product instead of three (or, for
  DoRA, a product plus a weight-norm rescaling). Embeddings do not change beyond float rounding.
- `to_precision("bfloat16")`: bfloat16 weights; on CPUs with AVX-512 BF16 / AMX a bf16 matrix
  product runs at 2-3x the float32 rate.
- `to_precision("int8")`: dynamic int8 quantisation of the LLM's linear layers (weights int8 per
  tensor, activations quantised on the fly). The query side (text) only runs the LLM, so this is
  the CPU query path; the vision tower stays float32, so tiles are embedded as before.

`QueryEncoder` removes per-call set-up from the query path: the model is switched to eval mode,
frozen and warmed up once, and each call only tokenises and runs the forward pass.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geoloc.choices import ServingPrecision, canonical, check_choice
from geoloc.encoder.base import Encoder
from geoloc.encoder.loading import load_encoder
from geoloc.errors import GeolocError


def merge_adapters(encoder: Encoder) -> Encoder:
    """Fold LoRA / DoRA adapters into the backbone's weights, in place; returns the encoder.

    The merged encoder's spec says `full` tuning, because its weights can no longer be re-made
    from the base model plus an adapter: `save` then writes the merged backbone, and
    `load_encoder` reads it back as it is. An encoder without adapters is returned unchanged.
    """
    adapter = encoder.adapter
    if adapter is None:
        return encoder
    if encoder.dtype not in (torch.float32, torch.float64):
        # Merging adds a low-rank product to every weight; in bf16 that sum loses the small
        # adapter deltas to rounding. Merge in float32, cast afterwards (to_precision).
        raise GeolocError(
            f"merge adapters in float32, then change precision (the encoder is {encoder.dtype})"
        )
    encoder.backbone = adapter.merge_and_unload()
    encoder.spec = replace(encoder.spec, tuning=replace(encoder.spec.tuning, strategy="full"))
    encoder.backbone.requires_grad_(False)
    return encoder


def quantize_llm_int8(encoder: Encoder) -> Encoder:
    """Dynamic int8 quantisation of every linear layer of the text side, in place (CPU only):
    the MLLM's LLM, or a dual encoder's text tower.

    Uses torch's eager dynamic quantisation (`torch.ao.quantization.quantize_dynamic`): still
    shipped in torch 2.13 though marked deprecated in favour of torchao, which this project
    does not depend on. Adapters must be merged first (a peft layer is not a plain Linear).
    """
    if encoder.device.type != "cpu":
        raise GeolocError(f"int8 dynamic quantisation runs on the CPU only, not on {encoder.device}")
    if encoder.adapter is not None:
        raise GeolocError("merge the adapters before int8 quantisation (merge_adapters)")
    if encoder.dtype != torch.float32:
        raise GeolocError(f"int8 quantisation starts from float32 weights, not {encoder.dtype}")
    try:
        from torch.ao.quantization import quantize_dynamic  # ty: ignore[deprecated]  see the docstring
    except ImportError as error:  # a future torch without eager quantisation
        raise GeolocError(f"this torch has no dynamic quantisation ({error})") from error
    encoder.eval()
    with warnings.catch_warnings():
        # Deprecation notices about the move to torchao; the API works in this torch.
        warnings.simplefilter("ignore")
        quantize_dynamic(encoder.text_tower, {nn.Linear}, dtype=torch.qint8, inplace=True)  # ty: ignore[deprecated]
    return encoder


def to_precision(encoder: Encoder, precision: ServingPrecision) -> Encoder:
    """Cast (bfloat16) or quantise (int8) a float32 encoder for inference, in place."""
    precision = canonical(precision)  # bf16, the older spelling, still reads
    check_choice(precision, ServingPrecision, "precision")
    if precision == "bfloat16":
        encoder.to(torch.bfloat16)
    elif precision == "int8":
        quantize_llm_int8(encoder)
    return encoder


def load_for_serving(
    source: str | Path,
    precision: ServingPrecision = "float32",
    merge: bool = True,
    device: str | None = "cpu",
) -> Encoder:
    """Load an encoder ready to serve: adapters merged (unless merge=False), then cast or quantised.

    `source` is anything `load_encoder` takes. Weights are loaded in float32 and merged
    before any cast, so bf16 and int8 round the merged weights once.
    """
    precision = canonical(precision)
    check_choice(precision, ServingPrecision, "precision")
    if precision == "int8" and not merge:
        raise GeolocError("int8 serving needs merged adapters: use merge=True")
    encoder = load_encoder(source, device=device, dtype="float32")
    if merge:
        merge_adapters(encoder)
    to_precision(encoder, precision)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


class QueryEncoder:
    """Text queries to unit vectors with nothing set up per call.

    The encoder is put in eval mode and frozen once and warmed up with one query (the first
    forward pass of a torch model pays one-off kernel and memory set-up). `threads`, if given,
    sets torch's intra-op threads for the whole process.
    """

    def __init__(self, encoder: Encoder, threads: int | None = None, warmup: bool = True):
        if threads is not None:
            torch.set_num_threads(threads)
        self.encoder = encoder.eval()
        self.encoder.requires_grad_(False)
        self.dim = encoder.embedding_dim
        if warmup:
            self.encode_batch(["warm up"])

    @torch.inference_mode()
    def encode_batch(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in one forward pass."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self.encoder(self.encoder.text_inputs(list(texts))).cpu().numpy()

    def encode(self, text: str) -> np.ndarray:
        """One query's (dim,) float32 unit vector."""
        return self.encode_batch([text])[0]

    def __call__(self, text: str) -> np.ndarray:
        return self.encode(text)
