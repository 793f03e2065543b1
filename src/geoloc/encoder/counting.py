"""Exact parameter counts of real backbones, built on the `meta` device (no weights, no memory).

    result = count_parameters_on_meta("internvl3_5-1b", TuningConfig("dora", 16, 128.0, 0.1, "gaussian"))
    print(format_counts(result))

The model is the family's transformers class built from a config, with the SAME adapter code that
trains (`apply_tuning`) and the same pooling head (`build_pooling`), so the figures are those of a
training run. peft builds DoRA magnitude vectors on meta tensors without help: the weight norm
it takes is itself a meta tensor of the right shape, so nothing here is patched.

Sources: a shipped real config (`smolvlm-256m`, `smolvlm-500m`, `internvl3_5-1b`, or the Hugging
Face id each stands for), a path to any `config.json` (or a folder holding one), or a tiny preset.
The shipped configs carry the public config files' shapes and reproduce the published totals
exactly: SmolVLM-256M-Instruct 256,484,928; SmolVLM-500M-Instruct 507,482,304; InternVL3.5-1B-HF
1,060,897,792 (vision 304,012,288 + language 751,632,384 + projector 5,253,120).

The paper's released recipe on InternVL3.5-1B (DoRA, r=16, targets "paper") trains 9,027,584
parameters: r * sum(in + out) = 8,781,824 over the 212 targeted linears (72 in the vision tower,
140 in the LLM) plus 245,760 DoRA magnitudes (one per output feature); 2,433,024 of them in the
vision tower and 6,594,560 in the LLM.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geoloc.choices import Pooling, check_choice
from geoloc.encoder.families import config_from_file, config_from_source, family_for_model_type
from geoloc.encoder.model_files import MODEL_FILES_DIR, REAL_BACKBONES
from geoloc.encoder.pooling import build_pooling
from geoloc.encoder.presets import PRESETS, preset_config
from geoloc.encoder.tuning import TuningConfig, apply_tuning, count_parameters
from geoloc.errors import ConfigError, GeolocError

# Short names of the shipped real configs (model_files/<folder>/config.json, as published).
REAL_CONFIGS: dict[str, str] = {b.name: b.folder for b in REAL_BACKBONES}
HF_IDS: dict[str, str] = {b.hub_id: b.name for b in REAL_BACKBONES}


def real_config_file(name: str) -> Path:
    """The shipped config.json of a real backbone, by its short name."""
    return MODEL_FILES_DIR / REAL_CONFIGS[name] / "config.json"


PARTS: tuple[str, ...] = ("vision", "llm", "other")
_PEFT_PREFIX = "base_model.model."
_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _known_sources() -> str:
    return ", ".join([*REAL_CONFIGS, *HF_IDS, *PRESETS])


def resolve_config(source: str | Path) -> tuple[str, Any]:
    """(a display name, the transformers config) for a counting source."""
    text = str(source)
    if text in PRESETS:
        return text, preset_config(text)
    name = HF_IDS.get(text, text)
    if name in REAL_CONFIGS:
        return name, config_from_file(real_config_file(name))
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GeolocError(f"{path}: folder holds no config.json")
        return text, config_from_file(path / "config.json")
    if path.is_file():
        return text, config_from_file(path)
    if isinstance(source, str) and _HF_ID.fullmatch(source):
        # Another Hugging Face id: its config comes from the local cache or the hub.
        try:
            return text, config_from_source(source)
        except (OSError, ValueError) as error:
            raise GeolocError(
                f"cannot count {source!r}: not a shipped config ({_known_sources()}), no such file or "
                f"folder, and no reachable Hugging Face config ({error})"
            ) from error
    raise GeolocError(
        f"cannot count {text!r}: no such config.json or folder, and not a known backbone ({_known_sources()})"
    )


def _part(name: str, vision_prefix: str, llm_prefix: str) -> str:
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX) :]
    if name.startswith(vision_prefix):
        return "vision"
    if name.startswith(llm_prefix):
        return "llm"
    return "other"


def count_parameters_on_meta(
    source: str | Path,
    tuning: TuningConfig,
    pooling: Pooling = "eos",
    query_tokens: int = 4,
    query_heads: int = 4,
) -> dict[str, Any]:
    """Exact total and trainable parameter counts of a backbone + adapters + pooling head."""
    name, config = resolve_config(source)
    family = family_for_model_type(config.model_type)
    check_choice(pooling, Pooling, "pooling")
    with torch.device("meta"):
        try:
            backbone = family.transformers_class()(config)
        except (TypeError, ValueError) as error:
            raise GeolocError(f"cannot build {family.model_class} from {name!r} ({error})") from error
        try:
            pooler = build_pooling(pooling, config.text_config.hidden_size, query_tokens, query_heads)
        except ValueError as error:  # e.g. query_heads not dividing the hidden size
            raise ConfigError(str(error)) from error
    base_total, _ = count_parameters(backbone)
    backbone = apply_tuning(backbone, family, tuning)
    # The same container shape as MllmEncoder: the backbone and the pooler side by side.
    whole = nn.ModuleDict({"backbone": backbone, "pooler": pooler})
    total, trainable = count_parameters(whole)
    by_part = dict.fromkeys(PARTS, 0)
    trainable_by_part = dict.fromkeys(PARTS, 0)
    vision_prefix, llm_prefix = family.vision_path + ".", family.llm_path + "."
    seen: set[int] = set()
    for module_name, module in whole.items():
        for param_name, param in module.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            part = _part(param_name, vision_prefix, llm_prefix) if module_name == "backbone" else "other"
            by_part[part] += param.numel()
            if param.requires_grad:
                trainable_by_part[part] += param.numel()
    return {
        "backbone": name,
        "family": family.name,
        "tuning": asdict(tuning),
        "pooling": pooling,
        "total": total,
        "trainable": trainable,
        "trainable_by_part": trainable_by_part,
        "total_by_part": by_part,
        "pooling_params": count_parameters(pooler)[0],
        "base_total": base_total,
    }


def count_for_config(config: Any) -> dict[str, Any]:
    """Counts for a run configuration (`geoloc.config.Config`): its backbone, tuning and pooling."""
    model = config.model
    return count_parameters_on_meta(
        model.backbone, config.tuning, model.pooling, model.query_tokens, model.query_heads
    )


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f} M"


def format_counts(result: dict[str, Any]) -> str:
    """A human-readable table of a `count_parameters_on_meta` result."""
    tuning = result["tuning"]
    if tuning["strategy"] in ("lora", "dora"):
        how = (
            f"{tuning['strategy']} r={tuning['rank']} alpha={tuning['alpha']:g} "
            f"dropout={tuning['dropout']:g} init={tuning['init']} targets={tuning['targets']}"
        )
    else:
        how = tuning["strategy"]
    total, trainable = result["total"], result["trainable"]
    share = 100.0 * trainable / total if total else 0.0
    rows = [
        ("base model", result["base_total"]),
        ("total", total),
        ("trainable", trainable),
        *((f"  {part}", n) for part, n in result["trainable_by_part"].items()),
    ]
    width = max(len(f"{n:,}") for _, n in rows)
    lines = [
        f"backbone   {result['backbone']} (family {result['family']})",
        f"tuning     {how}",
        f"pooling    {result.get('pooling', '?')}",
    ]
    for label, n in rows:
        lines.append(f"{label:<12}{n:>{width},}  {_millions(n):>12}")
    lines.append(f"trainable share: {share:.3f} % of the total")
    return "\n".join(lines)
