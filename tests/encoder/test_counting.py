"""Exact parameter counts on the meta device: the published totals, and the paper's recipe."""

from __future__ import annotations

import json
import os
import re
import shutil

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
import transformers
from torch import nn

from geoloc.config import load_config
from geoloc.encoder.counting import (
    HF_IDS,
    config_from_file,
    count_for_config,
    count_parameters_on_meta,
    format_counts,
    real_config_file,
    resolve_config,
)
from geoloc.encoder.families import family_for_model_type
from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.model_files import write_model_files
from geoloc.encoder.presets import PRESETS, preset_processing
from geoloc.encoder.tuning import TuningConfig, target_regex
from geoloc.errors import ConfigError, GeolocError

# Published totals of the `*ForConditionalGeneration` models (untied lm_head).
PUBLISHED = {
    "smolvlm-256m": 256_484_928,
    "smolvlm-500m": 507_482_304,
    "internvl3_5-1b": 1_060_897_792,
}
INTERNVL_VISION, INTERNVL_LANGUAGE, INTERNVL_PROJECTOR = 304_012_288, 751_632_384, 5_253_120
RECIPE = TuningConfig(strategy="dora", rank=16, alpha=128.0, dropout=0.1, init="gaussian", targets="paper")
RECIPE_TRAINABLE = 9_027_584  # the paper's "about 9 M": DoRA r=16 on InternVL3.5-1B, targets "paper"
FROZEN = TuningConfig(strategy="frozen")


def _meta_model(name: str) -> nn.Module:
    """The plain real-shape model, built here on the meta device from the shipped config."""
    config = config_from_file(real_config_file(name))
    family = family_for_model_type(config.model_type)
    with torch.device("meta"):
        return getattr(transformers, family.model_class)(config)


def _targeted(model: nn.Module, targets: str) -> dict[str, nn.Linear]:
    family = family_for_model_type(model.config.model_type)
    pattern = re.compile(target_regex(family, targets))
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)}


def _closed_form(layers: dict[str, nn.Linear], rank: int, dora: bool) -> int:
    count = sum(rank * (m.in_features + m.out_features) for m in layers.values())
    return count + (sum(m.out_features for m in layers.values()) if dora else 0)


def _query_pooling_params(hidden: int, queries: int) -> int:
    # queries + MultiheadAttention (in-proj 3h x h + bias, out-proj h x h + bias) + LayerNorm
    return queries * hidden + (3 * hidden * hidden + 3 * hidden) + (hidden * hidden + hidden) + 2 * hidden


@pytest.fixture(scope="module")
def internvl() -> nn.Module:
    return _meta_model("internvl3_5-1b")


@pytest.fixture(scope="module")
def recipe() -> dict:
    return count_parameters_on_meta("internvl3_5-1b", RECIPE)


# -- the real shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_totals_exactly(name: str) -> None:
    result = count_parameters_on_meta(name, FROZEN)
    assert result["base_total"] == PUBLISHED[name]
    assert result["total"] == PUBLISHED[name]
    assert result["trainable"] == 0
    assert sum(result["total_by_part"].values()) == PUBLISHED[name]
    assert result["backbone"] == name


def test_hf_ids_map_to_the_shipped_configs() -> None:
    for hf_id, name in HF_IDS.items():
        assert resolve_config(hf_id)[0] == name
    result = count_parameters_on_meta("OpenGVLab/InternVL3_5-1B-HF", FROZEN)
    assert result["total"] == PUBLISHED["internvl3_5-1b"]


def test_internvl_split_matches_the_published_parts(internvl: nn.Module) -> None:
    numel = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert numel(internvl.model.vision_tower) == INTERNVL_VISION
    assert numel(internvl.model.language_model) + numel(internvl.lm_head) == INTERNVL_LANGUAGE
    assert numel(internvl.model.multi_modal_projector) == INTERNVL_PROJECTOR
    parts = count_parameters_on_meta("internvl3_5-1b", FROZEN)["total_by_part"]
    assert parts["vision"] == INTERNVL_VISION
    # lm_head is not under the LLM's module path, so it counts as "other" with the projector.
    assert parts["llm"] == INTERNVL_LANGUAGE - numel(internvl.lm_head)
    assert parts["other"] == INTERNVL_PROJECTOR + numel(internvl.lm_head)


# -- the paper's recipe -----------------------------------------------------------------------


def test_recipe_trainable_equals_the_closed_form(internvl: nn.Module, recipe: dict) -> None:
    layers = _targeted(internvl, "paper")
    family = family_for_model_type("internvl")
    vision = {n: m for n, m in layers.items() if n.startswith(family.vision_path + ".")}
    llm = {n: m for n, m in layers.items() if n.startswith(family.llm_path + ".")}
    assert len(vision) == 24 * 3 and len(llm) == 28 * 5 and len(layers) == len(vision) + len(llm)
    assert recipe["trainable"] == _closed_form(layers, 16, dora=True) == RECIPE_TRAINABLE
    assert recipe["trainable_by_part"] == {
        "vision": _closed_form(vision, 16, dora=True),
        "llm": _closed_form(llm, 16, dora=True),
        "other": 0,
    }
    assert recipe["trainable_by_part"] == {"vision": 2_433_024, "llm": 6_594_560, "other": 0}
    assert 8.5e6 < recipe["trainable"] < 9.5e6  # "about 9 M trainable parameters"
    assert recipe["base_total"] == PUBLISHED["internvl3_5-1b"]
    assert recipe["total"] == recipe["base_total"] + recipe["trainable"]
    assert recipe["tuning"]["strategy"] == "dora" and recipe["family"] == "internvl"


def test_lora_and_dora_differ_by_the_magnitudes(internvl: nn.Module, recipe: dict) -> None:
    lora = count_parameters_on_meta(
        "internvl3_5-1b", TuningConfig(**{**recipe["tuning"], "strategy": "lora"})
    )
    magnitudes = sum(m.out_features for m in _targeted(internvl, "paper").values())
    assert magnitudes == 245_760
    assert recipe["trainable"] - lora["trainable"] == magnitudes
    assert recipe["total"] - lora["total"] == magnitudes
    assert lora["trainable"] == _closed_form(_targeted(internvl, "paper"), 16, dora=False)


def test_frozen_full_and_query_pooling_on_a_real_shape() -> None:
    name, hidden = "smolvlm-256m", 576
    assert count_parameters_on_meta(name, FROZEN)["trainable"] == 0
    pooled = count_parameters_on_meta(name, FROZEN, pooling="query", query_tokens=4, query_heads=4)
    expected = _query_pooling_params(hidden, 4)
    assert pooled["trainable"] == pooled["pooling_params"] == expected
    assert pooled["trainable_by_part"] == {"vision": 0, "llm": 0, "other": expected}
    assert pooled["total"] == PUBLISHED[name] + expected
    full = count_parameters_on_meta(name, TuningConfig(strategy="full"))
    assert full["trainable"] == full["total"] == PUBLISHED[name]
    assert full["trainable_by_part"] == full["total_by_part"]


def test_format_counts(recipe: dict) -> None:
    text = format_counts(recipe)
    assert "9,027,584" in text and "9.03 M" in text
    assert "1,060,897,792" in text
    assert "dora r=16 alpha=128" in text and "internvl3_5-1b" in text


def test_count_for_config() -> None:
    config = load_config(
        None,
        [
            "model.backbone=internvl3_5-1b",
            "tuning.strategy=dora",
            "tuning.rank=16",
            "tuning.alpha=128",
            "tuning.dropout=0.1",
            "tuning.init=gaussian",
            "tuning.targets=paper",
        ],
    )
    assert count_for_config(config)["trainable"] == RECIPE_TRAINABLE
    config = load_config(
        None, ["model.backbone=tiny-smolvlm", "model.pooling=query", "tuning.strategy=frozen"]
    )
    result = count_for_config(config)
    assert result["trainable"] == result["pooling_params"] == _query_pooling_params(128, 4)


# -- tiny presets: the meta count equals a real encoder's count -------------------------------


_TUNINGS = [
    TuningConfig(strategy="lora", rank=4, targets="paper"),
    TuningConfig(strategy="dora", rank=8, alpha=64.0, init="gaussian", targets="llm-attn-mlp"),
    TuningConfig(strategy="full"),
    TuningConfig(strategy="frozen"),
]
# Every combination on the tiny presets; on the real-size ones (a full random model each, up to
# 15 s to build here) the one that exercises the most: DoRA and the learned-query pooling head.
_COMBINATIONS = [
    (preset, pooling, tuning)
    for preset in PRESETS
    for pooling in ("eos", "query")
    for tuning in _TUNINGS
    if preset.startswith("tiny-") or (pooling == "query" and tuning.strategy == "dora")
]


@pytest.mark.parametrize(
    ("preset", "pooling", "tuning"),
    _COMBINATIONS,
    ids=[f"{p}-{q}-{t.strategy}" for p, q, t in _COMBINATIONS],
)
def test_meta_equals_a_real_encoder_on_presets(preset: str, pooling: str, tuning: TuningConfig) -> None:
    encoder = MllmEncoder.load(preset, spec_overrides={"tuning": tuning, "pooling": pooling})
    result = count_parameters_on_meta(preset, tuning, pooling=pooling)
    assert (result["total"], result["trainable"]) == encoder.parameter_counts()
    assert sum(result["trainable_by_part"].values()) == result["trainable"]
    assert result["backbone"] == preset


# -- other sources and errors -----------------------------------------------------------------


def test_a_config_json_file_or_folder_works(tmp_path) -> None:
    folder = tmp_path / "smolvlm"
    folder.mkdir()
    shutil.copy(real_config_file("smolvlm-500m"), folder / "config.json")
    for source in (folder, folder / "config.json", str(folder)):
        assert count_parameters_on_meta(source, FROZEN)["total"] == PUBLISHED["smolvlm-500m"]
    # A downloaded InternVL folder: its config.json, as the converter writes it, has no top-level
    # tie_word_embeddings (InternVLConfig's default would tie, and miss the separate lm_head).
    internvl = tmp_path / "InternVL3_5-1B-HF"
    write_model_files("InternVL3_5-1B-HF", internvl)
    assert "tie_word_embeddings" not in json.loads((internvl / "config.json").read_text())
    assert count_parameters_on_meta(internvl, FROZEN)["total"] == PUBLISHED["internvl3_5-1b"]
    # A config written by transformers itself, here the tiny preset's.
    tokenizer, _ = preset_processing("tiny-internvl")
    PRESETS["tiny-internvl"].config(tokenizer).save_pretrained(tmp_path / "tiny")
    tuning = TuningConfig(strategy="dora", rank=4)
    from_file = count_parameters_on_meta(tmp_path / "tiny", tuning)
    assert from_file["total"] == count_parameters_on_meta("tiny-internvl", tuning)["total"]
    assert from_file["family"] == "internvl"


def test_bad_sources_raise_geoloc_error(tmp_path) -> None:
    with pytest.raises(GeolocError, match="no such config.json or folder.*smolvlm-256m"):
        count_parameters_on_meta(tmp_path / "missing", FROZEN)
    with pytest.raises(GeolocError, match="not a known backbone"):
        count_parameters_on_meta("smolvlm-9000b", FROZEN)
    with pytest.raises(GeolocError, match="holds no config.json"):
        count_parameters_on_meta(tmp_path, FROZEN)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(GeolocError, match="unsupported backbone model_type 'bert'.*idefics3"):
        count_parameters_on_meta(tmp_path, FROZEN)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(GeolocError, match="no 'model_type' field"):
        count_parameters_on_meta(tmp_path / "config.json", FROZEN)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(GeolocError, match="cannot read a model config"):
        count_parameters_on_meta(tmp_path / "config.json", FROZEN)


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="pooling: 'max' is not one of eos, mean, query"):
        count_parameters_on_meta("tiny-smolvlm", FROZEN, pooling="max")
    with pytest.raises(ConfigError, match="not divisible"):
        count_parameters_on_meta("tiny-smolvlm", FROZEN, pooling="query", query_heads=7)
    with pytest.raises(ConfigError, match="qlora"):
        count_parameters_on_meta("tiny-smolvlm", TuningConfig(strategy="qlora"))
