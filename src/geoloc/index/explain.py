"""Explain and re-rank with the backbone as the generator it was pretrained to be.

Retrieval uses the MLLM's hidden states through a retrieval adapter. With that adapter switched
off (peft's `disable_adapter`), the same weights are again an instruction-following generator,
so for each top tile it can be asked whether the tile matches the description, and why. A dual
encoder cannot do this.

- The *judgement* of a tile is log P("Yes") - log P("No") as the answer: one forward pass per
  tile with a real tokenizer (tiles of one query share the prompt, so they go in one batch).
- The *explanation* is the greedy continuation of the same prompt.
- *Re-ranking* sorts the retrieved tiles by judgement, ties kept in retrieval order.

A fully fine-tuned backbone has no adapter to switch off: its (changed) weights answer, and
`adapter_disabled` says so.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from geoloc.data.images import load_image
from geoloc.errors import GeolocError
from geoloc.index.region import Region
from geoloc.index.search import Hit, SearchIndex

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder

MAX_JUDGED = 100  # tiles one request may judge: each costs a forward pass of the full MLLM
QUESTION = (
    'A person on the ground describes a place: "{text}"\n'
    "Is this satellite image of that place? Answer Yes or No, then say why."
)


def tile_prompt(tokenizer: Any, family: Any, config: Any, question: str) -> str:
    """One tile and `question` as a user turn, ending where the assistant answers.

    The backbone's own chat template renders it in its native, image-first form (content parts
    [image, text], as the model's processor would be given them); the one image mark the template
    writes (SmolVLM `<image>`, InternVL `<IMG_CONTEXT>`) is then expanded to the tile's full
    placeholder, as the processor expands it. Without a template (the tiny presets), a plain
    "User: ... Assistant:" layout.
    """
    placeholder = family.placeholder(config)
    if not getattr(tokenizer, "chat_template", None):
        return f"User:{placeholder}\n{question}\nAssistant:"
    content = [{"type": "image"}, {"type": "text", "text": question}]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    mark = family.chat_image_mark
    if not isinstance(prompt, str) or prompt.count(mark) != 1 or question not in prompt:
        raise GeolocError(
            f"the backbone's chat template does not render one image ({mark}) and the question; "
            f"it gave {str(prompt)[:200]!r}"
        )
    return prompt.replace(mark, placeholder)


class Generator:
    """An encoder's backbone used to generate, with its retrieval adapter switched off."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        # The *ForConditionalGeneration model, with its LM head: its `generate` is GenerationMixin's,
        # which PreTrainedModel does not declare.
        self.model: Any = encoder.base_model
        self.adapter_disabled = encoder.adapter is not None
        self._yes = self._answers(("Yes", " Yes"))
        self._no = self._answers(("No", " No"))

    def _answers(self, words: tuple[str, ...]) -> list[tuple[int, ...]]:
        """The distinct token sequences of an answer's spellings (with and without a space)."""
        tokenizer = self.encoder.tokenizer
        return sorted({tuple(tokenizer(word, add_special_tokens=False)["input_ids"]) for word in words})

    @contextlib.contextmanager
    def generating(self) -> collections.abc.Generator[None]:
        """Adapter off, dropout off, no gradients; restored afterwards."""
        adapter = self.encoder.adapter
        adapter_off = (
            adapter.disable_adapter()
            if self.adapter_disabled and adapter is not None
            else contextlib.nullcontext()
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with adapter_off, torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    def prompt_ids(self, text: str) -> list[int]:
        encoder = self.encoder
        prompt = tile_prompt(encoder.tokenizer, encoder.family, encoder.config, QUESTION.format(text=text))
        return encoder.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _inputs(self, images: list[Image.Image], text: str) -> dict[str, torch.Tensor]:
        ids = torch.tensor([self.prompt_ids(text)] * len(images), dtype=torch.long)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)} | self.encoder.pixel_inputs(
            images
        )
        inputs = {name: value.to(self.encoder.device) for name, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.encoder.dtype)
        return inputs

    def _answer_log_probs(
        self, inputs: dict[str, torch.Tensor], answers: list[tuple[int, ...]]
    ) -> dict[tuple[int, ...], torch.Tensor]:
        """log P(answer | prompt, tile) of each token sequence, for each tile of the batch.

        A real tokenizer has "Yes" and "No" as single tokens, so one forward pass over the prompt
        scores all of them; a longer answer needs its own prefix fed in. Answers sharing a prefix
        share the pass.
        """
        prompt = inputs["input_ids"]
        by_prefix: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for answer in answers:
            by_prefix.setdefault(answer[:-1], []).append(answer)
        result: dict[tuple[int, ...], torch.Tensor] = {}
        for prefix, group in by_prefix.items():
            extra = torch.tensor([prefix] * len(prompt), dtype=torch.long, device=prompt.device).view(
                len(prompt), -1
            )
            ids = torch.cat([prompt, extra], dim=1)
            fed = inputs | {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            logits = self.model(**fed, use_cache=False).logits.float()
            # Position p predicts token p + 1: the answer's tokens are predicted from the prompt's end.
            log_probs = torch.log_softmax(logits[:, prompt.shape[1] - 1 :], dim=-1)
            for answer in group:
                token_log_probs = [log_probs[:, position, token] for position, token in enumerate(answer)]
                result[answer] = torch.stack(token_log_probs).sum(dim=0)
        return result

    def judge(self, images: list[Image.Image], text: str, batch_size: int = 8) -> np.ndarray:
        """log P(Yes) - log P(No) as the answer, for each tile (every spelling of each counts)."""
        scores: list[float] = []
        with self.generating():
            for start in range(0, len(images), batch_size):
                inputs = self._inputs(images[start : start + batch_size], text)
                answer = self._answer_log_probs(inputs, self._yes + self._no)
                yes = torch.logsumexp(torch.stack([answer[a] for a in self._yes]), dim=0)
                no = torch.logsumexp(torch.stack([answer[a] for a in self._no]), dim=0)
                scores.extend((yes - no).tolist())
        return np.array(scores, dtype=np.float64)

    def explain(self, image: Image.Image, text: str, max_new_tokens: int = 48) -> str:
        """The model's own answer to the question about this tile (greedy decoding)."""
        return self.explain_all([image], text, max_new_tokens)[0]

    def explain_all(
        self, images: list[Image.Image], text: str, max_new_tokens: int = 48, batch_size: int = 8
    ) -> list[str]:
        """The model's answer about each tile, greedy, `batch_size` tiles decoded side by side.

        Every tile's prompt has the same tokens, so a batch needs no padding: each row is the
        one-tile decoding, in a fraction of the steps (a top-20 /explain of 256 tokens is 256
        steps of 8 rows, not 20 x 256 steps of one). A row that ends early is padded with
        special tokens, which the decoding drops.
        """
        tokenizer = self.encoder.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        answers: list[str] = []
        with self.generating():
            for start in range(0, len(images), batch_size):
                inputs = self._inputs(images[start : start + batch_size], text)
                output = self.model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
                )
                new = output[:, inputs["input_ids"].shape[1] :]
                answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
        return answers


@dataclass
class Judged:
    """A retrieved tile with the generator's verdict on it."""

    hit: Hit
    retrieval_rank: int
    judgement: float
    explanation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.hit.to_dict(),
            "retrieval_rank": self.retrieval_rank,
            "judgement": self.judgement,
            "explanation": self.explanation,
        }


def judge_hits(
    index: SearchIndex, text: str, hits: list[Hit], explain: bool = False, max_new_tokens: int = 48
) -> list[Judged]:
    """The generator's judgement (and, with `explain`, its explanation) of each hit, in hit order."""
    if len(hits) > MAX_JUDGED:
        raise GeolocError(f"at most {MAX_JUDGED} tiles can be judged at once, not {len(hits)}")
    images = []
    for hit in hits:
        path = index.image_path(hit.key)
        if path is None:
            raise GeolocError(
                f"{index.stored.path}: the image of tile {hit.key!r} is missing or outside its gallery"
            )
        images.append(load_image(path))
    generator = Generator(index.encoder)
    with index.model_lock:
        scores = generator.judge(images, text)
        explanations: list[str | None] = (
            list(generator.explain_all(images, text, max_new_tokens)) if explain else [None] * len(images)
        )
    return [
        Judged(hit, hit.rank, float(score), explanation)
        for hit, score, explanation in zip(hits, scores, explanations, strict=True)
    ]


def rerank(judged: list[Judged]) -> list[Judged]:
    """Sort by judgement, best first (a stable sort: ties keep retrieval order), and renumber."""
    ordered = sorted(judged, key=lambda j: -j.judgement)
    return [
        Judged(dataclasses.replace(j.hit, rank=rank), j.retrieval_rank, j.judgement, j.explanation)
        for rank, j in enumerate(ordered, start=1)
    ]


def search_and_judge(
    index: SearchIndex,
    text: str,
    k: int = 5,
    rerank_results: bool = False,
    explain: bool = False,
    max_new_tokens: int = 48,
    region: Region | None = None,
) -> list[Judged]:
    """Retrieve the top `k` (inside `region` if given), have the generator judge them, optionally
    re-order by its judgement."""
    if k > MAX_JUDGED:
        raise GeolocError(f"at most {MAX_JUDGED} tiles can be judged at once, not {k}")
    judged = judge_hits(index, text, index.search(text, k, region), explain, max_new_tokens)
    return rerank(judged) if rerank_results else judged
