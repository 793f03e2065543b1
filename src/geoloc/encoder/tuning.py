"""Tuning strategies: which backbone parameters train, and where adapters go.

Adapter targets are chosen by full module path, because the vision tower and the LLM share
projection names (`q_proj` exists in both). A target set is a name in TARGET_SETS, or several
joined with `+`, each family stating its module paths (families.py); `re:<regex>` gives a custom
full-path regex.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from geoloc.choices import LoraInit, TuningStrategy, check_choice
from geoloc.encoder.families import BackboneFamily
from geoloc.errors import ConfigError

TARGET_SETS: tuple[str, ...] = ("llm-attn", "llm-attn-mlp", "vision-attn", "paper")


@dataclass
class TuningConfig:
    strategy: TuningStrategy = "lora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    init: LoraInit = "default"  # peft's init_lora_weights; "default" is its True
    targets: str = "paper"


def target_regex(family: BackboneFamily, targets: str) -> str:
    """A regex that fully matches the module paths of the chosen adapter targets."""
    if targets.startswith("re:"):
        return targets[3:]
    sets = family.adapter_targets()
    chosen: list[str] = []
    for name in targets.split("+"):
        if name not in sets:
            raise ConfigError(
                f"unknown adapter targets {name!r}; choose from {', '.join(TARGET_SETS)} "
                "(join several with '+'), or 're:<regex>'"
            )
        chosen.extend(sets[name])
    return "|".join(f"(?:{p})" for p in chosen)


def apply_tuning(backbone: nn.Module, family: BackboneFamily, tuning: TuningConfig) -> nn.Module:
    """Freeze or unfreeze the backbone and wrap it with adapters, as the strategy says; the
    family (of either encoder kind) names the target sets."""
    check_choice(tuning.strategy, TuningStrategy, "tuning.strategy")
    check_choice(tuning.init, LoraInit, "tuning.init")
    if tuning.strategy == "full":
        backbone.requires_grad_(True)
        return backbone
    backbone.requires_grad_(False)
    if tuning.strategy == "frozen":
        return backbone
    from peft import LoraConfig, NoMatchingPeftModuleError, get_peft_model

    regex = target_regex(family, tuning.targets)
    init: bool | str = True if tuning.init == "default" else tuning.init
    config = LoraConfig(
        r=tuning.rank,
        lora_alpha=tuning.alpha,  # ty: ignore[invalid-argument-type]  peft says int; any number scales
        lora_dropout=tuning.dropout,
        target_modules=regex,
        init_lora_weights=init,
        use_dora=tuning.strategy == "dora",
        bias="none",
    )
    # peft checks the targets itself; its errors are the config's, so they are ConfigErrors.
    try:
        return get_peft_model(backbone, config)
    except NoMatchingPeftModuleError as error:
        raise ConfigError(
            f"adapter targets {tuning.targets!r} match no linear layer of this backbone"
        ) from error
    except ValueError as error:  # e.g. a regex that matches a layer type peft cannot adapt
        raise ConfigError(
            f"cannot add {tuning.strategy} adapters with targets {tuning.targets!r}: {error}"
        ) from error


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
