"""Sharding the frozen language model across processes with FSDP (torch's fully_shard).

With LoRA / DoRA almost every weight of the backbone is frozen, and the frozen language model is
most of it (InternVL3.5-8B: about 7.6 of 8.5 B parameters). `train.sharding: fsdp` splits each
decoder layer's frozen weights across the processes: each process keeps 1/N of them and FSDP
gathers a layer's weights just before that layer runs (forward and backward), then frees them.

The trainable adapter weights are left out of the shards (`ignored_params`): they are small, so
every process keeps all of them and their gradients are averaged explicitly, exactly as DDP
would. That keeps checkpoints, the optimizer, gradient clipping and saving unchanged.

The vision tower and projector are not sharded: the tile-feature cache runs them on each
process's own tiles, a different number of times per process, and a sharded module must run in
step on every process (its weights are gathered collectively). The language model is always run
in step: the trainer gives every process equal shares of a batch (padding with repeated rows
whose embeddings are dropped) and every process evaluates the whole validation set.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from geoloc.encoder.base import Encoder
from geoloc.encoder.families import MllmFamily
from geoloc.errors import ConfigError

SHARDING_CHOICES = ("ddp", "fsdp")


def decoder_layers(encoder: Encoder) -> list[nn.Module]:
    """The language model's decoder layers (Llama in SmolVLM, Qwen3 in InternVL3.5), where the
    family registry says they are; none for a dual encoder."""
    if not isinstance(encoder.family, MllmFamily):
        return []
    layers = encoder.base_model.get_submodule(encoder.family.decoder_layers_path)
    return list(cast(nn.ModuleList, layers))  # a decoder's layers are an nn.ModuleList


def check_shardable(encoder: Encoder, strategy: str, saves_backbone: bool) -> None:
    """Refuse, with the reason, set-ups that FSDP here cannot shard or save."""
    if not decoder_layers(encoder):
        raise ConfigError(
            "train.sharding=fsdp shards a multimodal LLM's decoder layers; this backbone has none "
            "(a dual encoder is small enough for ddp)"
        )
    if strategy == "full" or saves_backbone:
        raise ConfigError(
            "train.sharding=fsdp shards frozen weights and keeps the trained ones whole; "
            f"tuning.strategy {strategy!r} trains (or saves) the whole backbone: use ddp"
        )


def shard_language_model(encoder: Encoder, device: torch.device) -> int:
    """Shard every decoder layer's frozen weights over the process group; returns the layer count.

    Call once the process group exists. The encoder may still be on the CPU: each layer's shard
    moves to `device` (so an 8B model never sits whole on one GPU); the rest moves after.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    layers = decoder_layers(encoder)
    for layer in layers:
        trainable = {p for p in layer.parameters() if p.requires_grad}
        fully_shard(layer, mesh=mesh, ignored_params=trainable)
    encoder.to(device)  # what is not sharded: vision tower, projector, embeddings, adapters
    return len(layers)


def local_parameter_bytes(module: nn.Module) -> int:
    """Bytes of parameters this process holds (a sharded parameter counts its local shard)."""
    total = 0
    for parameter in module.parameters():
        to_local = getattr(parameter, "to_local", None)  # a sharded parameter (DTensor)'s own part
        local = to_local() if to_local is not None else parameter
        total += local.numel() * local.element_size()
    return total
