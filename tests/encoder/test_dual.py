"""The CLIP / SigLIP dual-encoder baseline: same API, same trainer, same commands as MllmEncoder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.cli import main
from geoloc.encoder.dual import DualEncoder
from geoloc.encoder.loading import load_encoder
from geoloc.encoder.presets import preset_model
from geoloc.encoder.saved import SPEC_FILE
from geoloc.encoder.tuning import TuningConfig, target_regex
from geoloc.errors import ConfigError

TEXTS = ["a red building by a pond", "trees", "a long grey warehouse with a parking lot on its left side"]


def _tiles() -> list[Image.Image]:
    return [Image.new("RGB", (80, 80), c) for c in ("red", "green", (30, 60, 200))]


@pytest.fixture(scope="module", params=["tiny-clip", "tiny-siglip"])
def lora_encoder(request: pytest.FixtureRequest) -> DualEncoder:
    # gaussian init: the adapters change the output from the start, so saving them is tested.
    tuning = TuningConfig("lora", rank=4, alpha=8.0, dropout=0.0, init="gaussian", targets="paper")
    return load_encoder(request.param, spec_overrides={"tuning": tuning})


def test_presets_load_through_geoencoder_and_embed(lora_encoder: DualEncoder) -> None:
    assert isinstance(lora_encoder, DualEncoder)
    texts = lora_encoder.encode_text(TEXTS)
    tiles = lora_encoder.encode_images(_tiles())
    assert texts.shape == (3, lora_encoder.embedding_dim) and tiles.shape == (3, lora_encoder.embedding_dim)
    assert texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tiles, axis=1), 1.0, atol=1e-5)
    assert lora_encoder.image_token_inputs(3) == {}  # a tile is pixels only
    assert lora_encoder.encode_text([]).shape == (0, lora_encoder.embedding_dim)


def test_batching_does_not_change_a_text_embedding(lora_encoder: DualEncoder) -> None:
    together = lora_encoder.encode_text(TEXTS)
    alone = np.stack([lora_encoder.encode_text([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_text_inputs_follow_each_towers_convention(lora_encoder: DualEncoder) -> None:
    tok = lora_encoder.tokenizer
    long_text = " ".join(["red building"] * 200)
    inputs = lora_encoder.text_inputs(["trees", long_text])
    ids = inputs["input_ids"]
    limit = lora_encoder.config.text_config.max_position_embeddings
    assert ids.shape[1] <= limit
    if lora_encoder.spec.family == "clip":  # start + text + end, right-padded, with a mask
        assert ids[0, 0] == tok.bos_token_id and "attention_mask" in inputs
        assert ids[0, inputs["attention_mask"][0].sum() - 1] == tok.eos_token_id
    else:  # SigLIP: padded to the full length, no mask, end token after the text
        assert ids.shape[1] == limit and "attention_mask" not in inputs
        assert tok.eos_token_id in ids[0].tolist()
    assert ids[1, -1] == tok.eos_token_id  # a cut text keeps its end token


def test_lora_trainable_count_is_the_closed_form(lora_encoder: DualEncoder) -> None:
    # r * sum(in + out) over the targeted linears: q/k/v/out of both towers' encoder layers.
    base = preset_model(lora_encoder.spec.backbone)  # an untouched copy: no adapters in it
    pattern = re.compile(target_regex(lora_encoder.family, "paper"))
    names = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]
    assert len(names) == 4 * (2 + 2)  # 4 projections x 2 layers x 2 towers
    modules = dict(base.named_modules())
    expected = sum(4 * (modules[n].in_features + modules[n].out_features) for n in names)
    assert lora_encoder.parameter_counts()[1] == expected


def test_saved_lora_encoder_reloads_to_the_same_embeddings(lora_encoder: DualEncoder, tmp_path: Path) -> None:
    lora_encoder.save(tmp_path / "model")
    spec = json.loads((tmp_path / "model" / SPEC_FILE).read_text())
    assert spec["family"] == lora_encoder.spec.family and (tmp_path / "model" / "adapter").is_dir()
    again = load_encoder(tmp_path / "model")
    assert isinstance(again, DualEncoder)
    np.testing.assert_allclose(again.encode_text(TEXTS), lora_encoder.encode_text(TEXTS), atol=1e-5)
    np.testing.assert_allclose(again.encode_images(_tiles()), lora_encoder.encode_images(_tiles()), atol=1e-5)


def test_full_tuning_saves_the_weights_and_leaves_the_logit_scale_frozen(tmp_path: Path) -> None:
    encoder = load_encoder("tiny-clip", spec_overrides={"tuning": TuningConfig("full")})
    total, trainable = encoder.parameter_counts()
    assert trainable == total - 1  # everything but CLIP's own logit scale (InfoNCE has its own)
    with torch.no_grad():
        encoder.base_model.text_projection.weight.mul_(-1.0)  # a change only saved weights can carry
    encoder.save(tmp_path / "full")
    again = load_encoder(tmp_path / "full", trainable=True)
    np.testing.assert_allclose(again.encode_text(TEXTS), encoder.encode_text(TEXTS), atol=1e-5)
    assert again.parameter_counts() == (total, trainable)
    # A plain transformers model folder (as downloaded from the hub) loads as a dual encoder too.
    folder = tmp_path / "hf-folder"
    for part in (encoder.base_model, encoder.tokenizer, encoder.image_processor):
        part.save_pretrained(folder)
    bare = load_encoder(folder)
    assert isinstance(bare, DualEncoder) and bare.spec.tuning.strategy == "frozen"
    np.testing.assert_allclose(bare.encode_images(_tiles()), encoder.encode_images(_tiles()), atol=1e-5)


def test_mllm_only_settings_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match="pooling 'mean' is for MLLMs"):
        load_encoder("tiny-clip", spec_overrides={"pooling": "mean"})
    with pytest.raises(ConfigError, match="unknown adapter targets"):
        load_encoder("tiny-siglip", spec_overrides={"tuning": TuningConfig("lora", targets="llm-mlp")})


def test_clip_trains_and_evaluates_through_the_same_commands(tiny_city: Path, tmp_path: Path) -> None:
    run = tmp_path / "clip-run"
    settings = [
        f"data.train={tiny_city}",
        "model.backbone=tiny-clip",
        "tuning.strategy=lora",
        "tuning.rank=4",
        "train.max_steps=3",
        "train.batch_size=8",
        "train.log_every=1",
        "train.save_every=2",
        "train.lr=1e-3",
        "train.progress=false",
    ]
    argv = ["train", "configs/synthetic-tiny.yaml", "--out", str(run)]
    assert main(argv + [x for s in settings for x in ("--set", s)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3]
    assert json.loads((run / "final" / SPEC_FILE).read_text())["family"] == "clip"

    assert main(["eval", str(run), "--data", str(tiny_city), "--split", "test", "--no-cache"]) == 0
    metrics = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert metrics["n_images"] > 0 and 0.0 <= metrics["text_to_image"]["R@1"] <= 100.0


def test_one_loader_and_honest_types() -> None:
    from geoloc import load_encoder as top_level
    from geoloc.encoder.base import Encoder
    from geoloc.encoder.dual import DualEncoder
    from geoloc.encoder.mllm import MllmEncoder
    from geoloc.errors import GeolocError

    assert top_level is load_encoder
    dual, mllm = load_encoder("tiny-clip"), load_encoder("tiny-smolvlm")
    assert isinstance(dual, DualEncoder) and isinstance(dual, Encoder) and not isinstance(dual, MllmEncoder)
    assert isinstance(mllm, MllmEncoder) and isinstance(mllm, Encoder)
    with pytest.raises(GeolocError, match="dual encoder, not an MLLM"):
        MllmEncoder.load("tiny-clip")  # was: returned a DualEncoder typed as MllmEncoder
