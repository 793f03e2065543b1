"""Tiny presets: small random backbones built from configs, with a tokenizer trained locally.

They need no download and go through exactly the code that real weights go through: the same
transformers classes, the same family registry, the same tokenizer and image-processor calls.
A preset is deterministic: the same name always builds the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from geoloc.encoder.families import FAMILIES
from geoloc.encoder.model_files import REAL_BACKBONES, real_config, real_processing

# Words a tiny tokenizer should know as whole tokens; anything else still encodes byte by byte.
CORPUS = """
a an the and with of to its on in at along beside near next by from between across around
north south east west northern southern eastern western north-south east-west centre center middle
top bottom left right upper lower corner side edge half
red blue green yellow white grey gray black brown orange purple pink dark light pale
building buildings house block tower office warehouse hall shed church school
square rectangular round circular l-shaped u-shaped long wide narrow tall small large big tiny
roof flat gabled dome domed
road street lane highway avenue path runs crosses curves
water pond lake river pool canal trees tree woods grove park garden lawn grass
parking lot car park field fields farmland crops plaza court
there is are one two three four several some many few stands sits lies
i see can by my on to left right behind front
""".split()


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    # (tokenizer, image size) -> transformers config; None for a real-size preset.
    build_config: Callable[[Any, int], Any] | None
    image_size: int = 0  # a tiny preset's; a real-size one's is in its config
    # For a real-size preset: the model_files folder whose config, tokenizer and image processor
    # it uses (only its weights are random).
    real_files: str = ""

    def config(self, tokenizer: Any = None) -> Any:
        """The transformers config: the shipped config.json of a real-size preset, else one built
        with the tiny tokenizer's ids written in."""
        if self.real_files or self.build_config is None:
            return real_config(self.real_files)
        return self.build_config(tokenizer, self.image_size)


def build_tokenizer(extra_special: list[str], vocab_size: int = 800) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<|endoftext|>", "<unk>", *extra_special]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus in varied phrases so merges form whole words.
    tokenizer.train_from_iterator([" ".join(CORPUS)] * 4 + CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=extra_special,
    )


_SMOLVLM_TOKENS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
_INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>"]


# Both tiny presets share these sizes: a 2-layer vision tower and a 2-layer LLM.
_TINY_VISION = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4)
_TINY_LLM = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)


def _smolvlm_config(tokenizer: Any, image_size: int) -> Any:
    from transformers import Idefics3Config

    return Idefics3Config(
        vision_config=dict(**_TINY_VISION, image_size=image_size, patch_size=8),
        text_config=dict(
            **_TINY_LLM,
            model_type="llama",
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            rope_theta=10000.0,
        ),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _internvl_config(tokenizer: Any, image_size: int) -> Any:
    from transformers import InternVLConfig

    patch = 7
    return InternVLConfig(
        vision_config=dict(
            **_TINY_VISION,
            image_size=[image_size, image_size],
            patch_size=[patch, patch],
            attention_bias=True,
        ),
        text_config=dict(
            **_TINY_LLM,
            model_type="qwen3",
            head_dim=32,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=(image_size // patch) ** 2 // 4,  # 2x2 pixel shuffle (downsample 0.5)
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )


PRESETS: dict[str, Preset] = {
    "tiny-smolvlm": Preset("tiny-smolvlm", "smolvlm", _smolvlm_config, 64),
    "tiny-internvl": Preset("tiny-internvl", "internvl", _internvl_config, 56),
    # Real-size architectures with random weights, for speed and memory benchmarks: every layer,
    # width and image size of the published model, and its real tokenizer and image processor.
    **{
        f"random-{b.name}": Preset(f"random-{b.name}", b.family, None, real_files=b.folder)
        for b in REAL_BACKBONES
        if b.random_preset
    },
}


def preset_processing(name: str) -> tuple[Any, Any]:
    """(tokenizer, image_processor) of a preset of either kind: the real files' for a real-size one."""
    if name in DUAL_PRESETS:
        return _dual_preset_processing(name)
    preset = PRESETS[name]
    if preset.real_files:
        return real_processing(preset.real_files)
    extra = _SMOLVLM_TOKENS if preset.family == "smolvlm" else _INTERNVL_TOKENS
    return build_tokenizer(extra), _image_processor(preset)


def preset_config(name: str, tokenizer: Any = None) -> Any:
    """The transformers config of an MLLM preset; a tiny one's is built with `tokenizer`'s ids
    (a new tiny tokenizer when none is given), a real-size one needs none."""
    preset = PRESETS[name]
    if tokenizer is None and not preset.real_files:
        tokenizer = preset_processing(name)[0]
    return preset.config(tokenizer)


def preset_model(name: str, device: str | torch.device = "cpu", tokenizer: Any = None) -> Any:
    """The model of a preset of either kind, with seeded random weights: the same name, the same
    weights. `tokenizer`: the preset's tokenizer, when the caller has built it already (the ids
    written into a tiny preset's config are its).

    `device` builds the weights there directly (a real-size preset on a GPU in seconds); the
    weights are then those of that device's random generator.
    """
    family = FAMILIES[PRESET_FAMILIES[name]]
    if name in DUAL_PRESETS:
        config = _dual_preset_config(name, preset_processing(name)[0] if tokenizer is None else tokenizer)
    else:
        config = preset_config(name, tokenizer)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(0)
        return family.transformers_class()(config)


def _image_processor(preset: Preset) -> Any:
    size = preset.image_size
    if preset.family == "smolvlm":
        from transformers import Idefics3ImageProcessorPil

        return Idefics3ImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": size},
            max_image_size={"longest_edge": size},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
    from transformers import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(crop_to_patches=False, size={"height": size, "width": size})


# -- dual-encoder presets (CLIP / SigLIP) ------------------------------------------------------
# Kept apart from PRESETS: those are MLLMs, which the parameter counter also takes; these are
# two-tower models. PRESET_FAMILIES names every preset's family.

_CLIP_TOKENS = ["<|startoftext|>"]


@dataclass(frozen=True)
class DualPreset:
    name: str
    family: str  # "clip" | "siglip"
    image_size: int
    real_size: bool = False  # the published architecture's shapes, for benchmarks


DUAL_PRESETS: dict[str, DualPreset] = {
    "tiny-clip": DualPreset("tiny-clip", "clip", 64),
    "tiny-siglip": DualPreset("tiny-siglip", "siglip", 64),
    # CLIP ViT-B/16's shapes (openai/clip-vit-base-patch16), random weights, with SmolLM2's real
    # tokenizer (its ids fit CLIP's 49,408-token table), so that benchmarks give both model
    # families the same token sequences.
    "random-clip-b16": DualPreset("random-clip-b16", "clip", 224, real_size=True),
}
# CLIP ViT-B/16: a 12-layer 512-wide text tower and a 12-layer 768-wide vision tower at 224 px.
_CLIP_B16_TEXT = dict(
    hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, vocab_size=49408
)
_CLIP_B16_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16
)

# A text tower as small as the tiny LLM, a vision tower as small as the tiny MLLMs' one.
_TINY_TEXT_TOWER = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


def _dual_preset_processing(name: str) -> tuple[Any, Any]:
    """(tokenizer, image_processor) of a dual-encoder preset."""
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    preset = DUAL_PRESETS[name]
    size = preset.image_size
    if preset.family == "siglip":
        return build_tokenizer([]), SiglipImageProcessorPil(size={"height": size, "width": size})
    if preset.real_size:
        tokenizer, _ = real_processing("SmolVLM-256M-Instruct")
    else:
        tokenizer = build_tokenizer(_CLIP_TOKENS)
        tokenizer.bos_token = "<|startoftext|>"  # CLIP writes one before every text
    return tokenizer, CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def _dual_preset_config(name: str, tokenizer: Any) -> Any:
    """The transformers config of a tiny dual-encoder preset, with the tokenizer's ids written in."""
    preset = DUAL_PRESETS[name]
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if preset.real_size:
        from transformers import CLIPConfig

        text = dict(_CLIP_B16_TEXT, **{k: v for k, v in ids.items() if k != "vocab_size"})
        text["max_position_embeddings"] = 77
        vision = dict(_CLIP_B16_VISION, image_size=preset.image_size)
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)
    vision = dict(**_TINY_VISION, image_size=preset.image_size, patch_size=8)
    if preset.family == "clip":
        from transformers import CLIPConfig

        text = dict(**_TINY_TEXT_TOWER, **ids, max_position_embeddings=77)
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    from transformers import SiglipConfig

    # SigLIP has no projection: the text head maps onto the vision tower's width.
    text = dict(**_TINY_TEXT_TOWER, **ids, max_position_embeddings=64, projection_size=vision["hidden_size"])
    return SiglipConfig(text_config=text, vision_config=vision)


# Every preset's family, MLLM or two-tower (families.FAMILIES).
PRESET_FAMILIES: dict[str, str] = {p.name: p.family for p in (*PRESETS.values(), *DUAL_PRESETS.values())}
