"""Tuning strategies: which backbone parameters train, and where adapters go.

Adapter targets are chosen by full module path, because the vision tower and the LLM share
projection names (`q_proj` exists in both). A target set is a name below or several joined with
`+`; `re:<regex>` gives a custom full-path regex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from geoloc.encoder.families import BackboneFamily
from geoloc.errors import ConfigError

Strategy = Literal["frozen", "lora", "dora", "full"]
STRATEGIES: tuple[str, ...] = ("frozen", "lora", "dora", "full")
TARGET_SETS: tuple[str, ...] = ("llm-attn", "llm-attn-mlp", "vision-attn", "paper")

# The released recipe matches these names anywhere in the model: both towers' attention and the
# LLM's down_proj (InternVL's vision output projection is `projection_layer`, so it is not hit).
PAPER_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "down_proj")


@dataclass
class TuningConfig:
    strategy: Strategy = "lora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    init: str = "default"  # peft init_lora_weights: default | gaussian | pissa | olora | ...
    targets: str = "paper"


def _escape_path(path: str) -> str:
    return path.replace(".", r"\.")


def target_regex(family: BackboneFamily, targets: str) -> str:
    """A regex that fully matches the module paths of the chosen adapter targets."""
    llm = _escape_path(family.llm_path)
    vision = _escape_path(family.vision_path)
    llm_attn = rf"{llm}\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    llm_mlp = rf"{llm}\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)"
    parts = {
        "llm-attn": [llm_attn],
        "llm-attn-mlp": [llm_attn, llm_mlp],
        "vision-attn": [rf"{vision}\.{family.vision_attention}"],
        "paper": [rf".*\.({'|'.join(PAPER_NAMES)})"],
    }
    if targets.startswith("re:"):
        return targets[3:]
    chosen: list[str] = []
    for name in targets.split("+"):
        if name not in parts:
            raise ConfigError(
                f"unknown adapter targets {name!r}; choose from {', '.join(TARGET_SETS)} "
                "(join several with '+'), or 're:<regex>'"
            )
        chosen.extend(parts[name])
    return "|".join(f"(?:{p})" for p in chosen)


def matching_modules(model: nn.Module, regex: str) -> list[str]:
    import re

    pattern = re.compile(regex)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]


def apply_tuning(backbone: nn.Module, family: BackboneFamily, tuning: TuningConfig) -> nn.Module:
    """Freeze or unfreeze the backbone and wrap it with adapters, as the strategy says."""
    if tuning.strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown tuning strategy {tuning.strategy!r}; choose one of: {', '.join(STRATEGIES)}"
        )
    if tuning.strategy == "full":
        backbone.requires_grad_(True)
        return backbone
    backbone.requires_grad_(False)
    if tuning.strategy == "frozen":
        return backbone
    from peft import LoraConfig, get_peft_model

    regex = target_regex(family, tuning.targets)
    if not matching_modules(backbone, regex):
        raise ConfigError(f"adapter targets {tuning.targets!r} match no linear layer of this backbone")
    init: Any = True if tuning.init in ("default", "true", True) else tuning.init
    config = LoraConfig(
        r=tuning.rank,
        lora_alpha=tuning.alpha,
        lora_dropout=tuning.dropout,
        target_modules=regex,
        init_lora_weights=init,
        use_dora=tuning.strategy == "dora",
        bias="none",
    )
    return get_peft_model(backbone, config)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts, each shared tensor counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable
