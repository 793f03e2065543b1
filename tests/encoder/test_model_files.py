"""The backbones' real files: model folders as a download looks, loaded by the path users take.

Each folder holds the real config.json, tokenizer, processor settings and chat template of a
backbone (src/geoloc/encoder/model_files), with random weights in 2 layers per tower. What the
real files imply is tested here: the tile's token count and ids, no splitting, the pad and end
tokens, padding-side invariance, a training step with adapters, a save/load round trip, and
the chat prompt of explain/rerank.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from PIL import Image
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.model_files import REAL_MODELS, write_model_files
from geoloc.encoder.tuning import TuningConfig
from geoloc.index.explain import QUESTION, Generator

SMOLVLM = ("SmolVLM-256M-Instruct", "SmolVLM-500M-Instruct", "SmolVLM2-256M-Video-Instruct")
ALL = (*SMOLVLM, "InternVL3_5-1B-HF")
# What the real files say, per family: image size, visual tokens, the ids of the tile's wrapper,
# image, pad and end tokens.
FACTS = {
    "smolvlm": dict(
        size=512, visual=64, ids=67, image=49190, prefix=[49189, 49152], suffix=[49189], pad=2, eos=49279
    ),
    "internvl": dict(
        size=448, visual=256, ids=258, image=151671, prefix=[151669], suffix=[151670], pad=151643, eos=151645
    ),
}
TEXTS = ["a red roof", "a long white warehouse beside a car park with trees along its northern edge"]


def _facts(name: str) -> dict:
    return FACTS["smolvlm" if name in SMOLVLM else "internvl"]


def _tile(seed: int, size: int = 300) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module", params=ALL)
def loaded(request, real_model) -> tuple[str, MllmEncoder]:
    return request.param, MllmEncoder.load(real_model(request.param))


def test_a_tile_is_the_real_placeholder_with_the_real_ids(loaded) -> None:
    name, encoder = loaded
    facts = _facts(name)
    assert encoder.image_size == facts["size"]
    ids = encoder.image_token_inputs(1)["input_ids"][0].tolist()
    assert len(ids) == facts["ids"]
    assert ids.count(facts["image"]) == facts["visual"] == encoder.family.image_seq_len(encoder.config)
    assert ids[: len(facts["prefix"])] == facts["prefix"] and ids[-len(facts["suffix"]) :] == facts["suffix"]
    assert encoder.config.image_token_id == facts["image"]


def test_no_splitting_or_tiling_although_the_shipped_processor_splits(loaded) -> None:
    name, encoder = loaded
    size = _facts(name)["size"]
    pixels = encoder.pixel_inputs([_tile(0, 640)])["pixel_values"]
    assert pixels.shape[-2:] == (size, size)
    assert pixels.reshape(-1, 3, size, size).shape[0] == 1  # one image, no sub-images or patches
    if name in SMOLVLM:
        # Left to itself, the shipped image processor splits a 512 px tile into a 4 x 4 grid of
        # sub-images plus the whole: 17 images, 17 x 67 - 12 = 1,127 tokens with their wrappers.
        assert encoder.image_processor.do_image_splitting is True
        own = encoder.image_processor([[_tile(0, 512)]], return_tensors="pt")["pixel_values"]
        assert own.shape[1] == 17


def test_real_pad_and_end_tokens_and_no_bos(loaded) -> None:
    name, encoder = loaded
    facts = _facts(name)
    assert encoder.tokenizer.pad_token_id == facts["pad"]
    assert encoder.tokenizer.eos_token_id == facts["eos"]
    inputs = encoder.text_inputs(["a red roof", "a long white warehouse by the river"])
    plain = encoder.tokenizer("a red roof", add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, : len(plain)].tolist() == plain  # nothing written before the text
    assert inputs["input_ids"][0, len(plain) :].eq(facts["pad"]).all()  # right padding with the real pad


def test_padding_side_never_changes_a_vector_and_pooling_reads_the_last_real_token(loaded) -> None:
    name, encoder = loaded
    right = encoder.encode_text(TEXTS)
    alone = np.concatenate([encoder.encode_text([text]) for text in TEXTS])
    left_encoder = encoder.rebuilt(spec=dataclasses.replace(encoder.spec, padding_side="left"))
    left = left_encoder.encode_text(TEXTS)
    left_inputs = left_encoder.text_inputs(TEXTS)
    assert left_inputs["attention_mask"][0, 0] == 0  # the short text really is left-padded
    np.testing.assert_allclose(left, right, atol=2e-5)
    np.testing.assert_allclose(alone, right, atol=2e-5)  # padding changes nothing either way


def test_padding_side_in_bfloat16_stays_within_float_noise(real_model) -> None:
    folder = real_model("SmolVLM-256M-Instruct")
    vectors = {}
    for side in ("right", "left"):
        encoder = MllmEncoder.load(folder, dtype="bfloat16", spec_overrides={"padding_side": side})
        vectors[side] = encoder.encode_text(TEXTS)
    cosine = (vectors["left"] * vectors["right"]).sum(axis=1)
    assert cosine.min() > 0.99999, cosine


@pytest.mark.parametrize("strategy", ["lora", "dora"])
def test_one_adapter_training_step_then_a_save_load_round_trip(
    strategy: str, real_model, tmp_path: Path
) -> None:
    for name in ("SmolVLM-256M-Instruct", "InternVL3_5-1B-HF"):
        tuning = TuningConfig(strategy=strategy, rank=4, alpha=8.0, dropout=0.0, targets="paper")
        encoder = MllmEncoder.load(real_model(name), spec_overrides={"tuning": tuning}, trainable=True)
        trainable = {n: p.detach().clone() for n, p in encoder.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n or "magnitude" in n for n in trainable)
        optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
        encoder.train()
        text = encoder(encoder.text_inputs(TEXTS))
        image = encoder(encoder.image_inputs([_tile(1), _tile(2)]))
        loss = torch.nn.functional.cross_entropy(text @ image.T / 0.02, torch.arange(2))
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        changed = [
            n for n, p in encoder.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])
        ]
        assert changed, "the step moved no adapter weight"
        expected = encoder.encode_text(TEXTS), encoder.encode_images([_tile(3)])
        encoder.save(tmp_path / name)
        again = MllmEncoder.load(tmp_path / name)
        assert again.spec.tuning.strategy == strategy
        np.testing.assert_allclose(again.encode_text(TEXTS), expected[0], atol=1e-5)
        np.testing.assert_allclose(again.encode_images([_tile(3)]), expected[1], atol=1e-5)
        assert again.tokenizer.chat_template == encoder.tokenizer.chat_template


def test_explain_prompts_through_the_chat_template_image_first(loaded) -> None:
    name, encoder = loaded
    generator = Generator(encoder)
    prompt = encoder.tokenizer.decode(generator.prompt_ids("a red roof"))
    placeholder = encoder.family.placeholder(encoder.config)
    question = QUESTION.format(text="a red roof")
    if name in SMOLVLM:
        assert prompt == f"<|im_start|>User:{placeholder}{question}<end_of_utterance>\nAssistant:"
    else:
        assert prompt == f"<|im_start|>user\n{placeholder}\n{question}<|im_end|>\n<|im_start|>assistant\n"
    assert generator.judge([_tile(4)], "a red roof").shape == (1,)


def test_each_shipped_folder_is_complete_and_deduplicated(tmp_path: Path) -> None:
    from geoloc.encoder.model_files import MODEL_FILES_DIR

    for name in REAL_MODELS:
        folder = write_model_files(name, tmp_path / name)
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= names
        assert json.loads((folder / "config.json").read_text())["model_type"] in (
            "idefics3",
            "smolvlm",
            "internvl",
        )
    # One SmolLM2 tokenizer for the three SmolVLMs, and Qwen3's.
    assert len(list(MODEL_FILES_DIR.rglob("tokenizer.json"))) == 2


@pytest.mark.parametrize(
    ("preset", "real"),
    [("random-smolvlm-256m", "SmolVLM-256M-Instruct"), ("random-internvl3_5-1b", "InternVL3_5-1B-HF")],
)
def test_real_size_presets_use_the_real_tokenizer_and_processor(preset: str, real: str) -> None:
    from geoloc.encoder.model_files import real_processing
    from geoloc.encoder.presets import PRESETS, preset_processing

    tokenizer, processor = preset_processing(preset)
    real_tokenizer, real_processor = real_processing(real)
    assert len(tokenizer) == len(real_tokenizer) > 49_000  # not the 800-token toy tokenizer
    text = "a long white warehouse beside a car park, with trees along its northern edge"
    assert tokenizer(text)["input_ids"] == real_tokenizer(text)["input_ids"]
    assert processor.to_dict() == real_processor.to_dict()
    config = PRESETS[preset].config(tokenizer)
    assert config.image_token_id == _facts(real)["image"]
