"""Tuning strategies: where adapters land, and how many parameters train (closed forms)."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from geoloc.choices import TuningStrategy, options
from geoloc.encoder.families import FAMILIES
from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.presets import PRESETS, preset_model
from geoloc.encoder.tuning import (
    TARGET_SETS,
    TuningConfig,
    apply_tuning,
    count_parameters,
)
from geoloc.errors import ConfigError

RANK = 4
LLM_ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}
LLM_MLP = {"gate_proj", "up_proj", "down_proj"}
# The vision tower's attention projections, per preset, written out independently of families.py.
VISION_ATTN = {
    "tiny-smolvlm": {"q_proj", "k_proj", "v_proj", "out_proj"},
    "tiny-internvl": {"q_proj", "k_proj", "v_proj", "projection_layer"},
}
PAPER = {"q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "down_proj"}


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _expected(preset: str, targets: str, model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers a target set should hit, chosen by plain string tests on the paths."""
    family = FAMILIES[PRESETS[preset].family]
    chosen: dict[str, nn.Linear] = {}
    for name, layer in _linears(model).items():
        leaf = name.rsplit(".", 1)[-1]
        in_llm = name.startswith(family.llm_path + ".layers.")
        in_vision = name.startswith(family.vision_path + ".encoder.")
        for part in targets.split("+"):
            hit = {
                "llm-attn": in_llm and ".self_attn." in name and leaf in LLM_ATTN,
                "llm-attn-mlp": in_llm
                and ((".self_attn." in name and leaf in LLM_ATTN) or (".mlp." in name and leaf in LLM_MLP)),
                "vision-attn": in_vision and leaf in VISION_ATTN[preset],
                "paper": leaf in PAPER,
            }[part]
            if hit:
                chosen[name] = layer
    return chosen


def _adapted(peft_model: nn.Module) -> set[str]:
    prefix = "base_model.model."
    names = set()
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            assert name.startswith(prefix)
            names.add(name[len(prefix) :])
    return names


def _lora_count(layers: dict[str, nn.Linear], rank: int, dora: bool) -> int:
    count = sum(rank * (m.in_features + m.out_features) for m in layers.values())
    if dora:
        count += sum(m.out_features for m in layers.values())
    return count


@pytest.fixture(scope="module")
def base_models() -> dict[str, nn.Module]:
    return {preset: preset_model(preset) for preset in PRESETS}


@pytest.mark.parametrize("strategy", ["lora", "dora"])
@pytest.mark.parametrize(
    "targets", ["llm-attn", "llm-attn-mlp", "vision-attn", "paper", "llm-attn+vision-attn"]
)
@pytest.mark.parametrize("preset", ["tiny-smolvlm", "tiny-internvl"])
def test_adapter_placement_and_count(preset: str, targets: str, strategy: str) -> None:
    model = preset_model(preset)
    family = FAMILIES[PRESETS[preset].family]
    expected = _expected(preset, targets, model)
    assert expected, "precondition: the target set hits something"
    closed_form = _lora_count(expected, RANK, dora=strategy == "dora")

    wrapped = apply_tuning(model, family, TuningConfig(strategy=strategy, rank=RANK, targets=targets))
    adapted = _adapted(wrapped)
    assert adapted == set(expected)

    leaves = {n.rsplit(".", 1)[-1] for n in adapted}
    if targets == "llm-attn":
        assert all(n.startswith(family.llm_path + ".") for n in adapted)
        assert leaves == LLM_ATTN
    if targets == "vision-attn":
        assert all(n.startswith(family.vision_path + ".") for n in adapted)
        assert leaves == VISION_ATTN[preset]
    if "vision" not in targets and targets != "paper":
        assert not any(n.startswith(family.vision_path) for n in adapted)
    if targets == "paper":
        assert any(n.startswith(family.vision_path + ".") for n in adapted)
        assert any(n.startswith(family.llm_path + ".") for n in adapted)
        assert leaves <= PAPER
        assert not any(n.startswith("model.multi_modal_projector") or "connector" in n for n in adapted)

    _, trainable = count_parameters(wrapped)
    assert trainable == closed_form
    trainable_names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert all(("lora_" in n) for n in trainable_names)
    if strategy == "dora":
        assert any("lora_magnitude_vector" in n for n in trainable_names)
    else:
        assert not any("magnitude" in n for n in trainable_names)


@pytest.mark.parametrize("preset", ["tiny-smolvlm", "tiny-internvl"])
def test_frozen_and_full(base_models: dict, preset: str) -> None:
    family = FAMILIES[PRESETS[preset].family]
    model = preset_model(preset)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    frozen = apply_tuning(model, family, TuningConfig(strategy="frozen"))
    assert frozen is model
    assert count_parameters(frozen) == (total, 0)
    full = apply_tuning(model, family, TuningConfig(strategy="full"))
    assert full is model
    assert count_parameters(full) == (total, total)


def test_encoder_level_counts_and_identity_at_init(base_models: dict) -> None:
    tuning = TuningConfig(strategy="lora", rank=RANK, targets="llm-attn")
    encoder = MllmEncoder.load("tiny-internvl", spec_overrides={"tuning": tuning})
    plain = MllmEncoder.load("tiny-internvl", spec_overrides={"tuning": TuningConfig(strategy="frozen")})
    expected = _expected("tiny-internvl", "llm-attn", base_models["tiny-internvl"])
    total, trainable = encoder.parameter_counts()
    assert trainable == _lora_count(expected, RANK, dora=False)
    assert total == count_parameters(base_models["tiny-internvl"])[0] + trainable
    assert plain.parameter_counts()[1] == 0
    # Default LoRA init starts as the identity: the adapted encoder embeds like the plain one.
    texts = ["a red building", "a narrow lane crosses the fields"]
    np.testing.assert_allclose(encoder.encode_text(texts), plain.encode_text(texts), atol=1e-6)


def test_custom_regex_targets(base_models: dict) -> None:
    family = FAMILIES["smolvlm"]
    model = preset_model("tiny-smolvlm")
    wrapped = apply_tuning(
        model, family, TuningConfig(strategy="lora", rank=2, targets=r"re:.*\.layers\.1\.mlp\.(fc1|up_proj)")
    )
    assert _adapted(wrapped) == {
        "model.vision_model.encoder.layers.1.mlp.fc1",
        "model.text_model.layers.1.mlp.up_proj",
    }


def test_unknown_targets_and_strategy_raise_config_error() -> None:
    family = FAMILIES["smolvlm"]
    for bad in ["llm-attention", "llm-attn+bogus", ""]:
        with pytest.raises(ConfigError) as info:
            apply_tuning(preset_model("tiny-smolvlm"), family, TuningConfig(strategy="lora", targets=bad))
        for name in TARGET_SETS:
            assert name in str(info.value)
        assert "re:" in str(info.value)
    with pytest.raises(ConfigError, match="match no linear layer"):
        apply_tuning(
            preset_model("tiny-smolvlm"), family, TuningConfig(strategy="lora", targets="re:nothing")
        )
    # peft's own refusal of a layer type it cannot adapt is a ConfigError too.
    with pytest.raises(ConfigError, match="not supported"):
        apply_tuning(
            preset_model("tiny-smolvlm"), family, TuningConfig(strategy="lora", targets="re:.*post_layernorm")
        )
    with pytest.raises(ConfigError) as info:
        apply_tuning(preset_model("tiny-smolvlm"), family, TuningConfig(strategy="qlora"))
    assert "qlora" in str(info.value)
    for name in options(TuningStrategy):
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="bogus"):
        MllmEncoder.load("tiny-smolvlm", spec_overrides={"tuning": TuningConfig(targets="bogus")})


# -- the real InternVL3.5-1B-HF shape, on the meta device (no weights) --------------------------

INTERNVL35_1B_PARAMETERS = 1_060_897_792


def _internvl35_1b_config():
    from transformers import InternVLConfig

    return InternVLConfig(
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=[448, 448],
            patch_size=[14, 14],
            attention_bias=True,
            layer_scale_init_value=0.1,
            norm_type="layer_norm",
            use_qk_norm=False,
        ),
        text_config=dict(
            model_type="qwen3",
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        downsample_ratio=0.5,
        image_seq_length=256,
        image_token_id=151671,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def test_internvl35_1b_paper_dora_count_on_meta() -> None:
    from transformers import InternVLForConditionalGeneration

    config = _internvl35_1b_config()
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    total, trainable = count_parameters(model)
    assert total == INTERNVL35_1B_PARAMETERS
    family = FAMILIES["internvl"]
    assert family.image_seq_len(config) == config.image_seq_length == 256

    # Closed form from the base model's own linear shapes, before peft touches it.
    targeted = {name: layer for name, layer in _linears(model).items() if name.rsplit(".", 1)[-1] in PAPER}
    # 24 vision layers x (q, k, v) + 28 LLM layers x (q, k, v, o, down); no vision output projection.
    assert len(targeted) == 24 * 3 + 28 * 5
    rank = 16
    closed_form = _lora_count(targeted, rank, dora=True)
    by_hand = 24 * (rank * 3 * 2048 + 3 * 1024) + 28 * (
        rank * ((1024 + 2048) + 2 * (1024 + 1024) + (2048 + 1024) + (3072 + 1024)) + (2048 + 4 * 1024)
    )
    assert closed_form == by_hand == 9_027_584

    tuning = TuningConfig(
        strategy="dora", rank=rank, alpha=128, dropout=0.1, init="gaussian", targets="paper"
    )
    wrapped = apply_tuning(model, family, tuning)
    assert _adapted(wrapped) == set(targeted)
    total_after, trainable = count_parameters(wrapped)
    print(f"InternVL3.5-1B paper DoRA r=16: {trainable:,} trainable of {total_after:,}")
    assert trainable == closed_form
    assert total_after == INTERNVL35_1B_PARAMETERS + trainable
    magnitudes = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_magnitude_vector" in n)
    assert magnitudes == sum(m.out_features for m in targeted.values()) == 245_760
