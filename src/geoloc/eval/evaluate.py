"""Evaluate an encoder on a data set: embed both sides, score exactly, write the results.

`metrics.json` holds:
    {"protocol": ..., "text_to_image": {"R@1":..,"R@5":..,"R@10":..}, "image_to_text": {...},
     "mean": .., "n_texts": .., "n_images": .., "text_to_image_R@1": .., ...,
     "primary_metric": "text_to_image_R@1"}
with recalls in percent over the full gallery, where a hit is any gallery item of the query's
group; the flat keys repeat the nested numbers (see results.py). `embeddings.npz` (optional)
holds image_emb, text_emb, image_keys, text_image_keys, texts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc import atomic
from geoloc.data.manifest import Dataset
from geoloc.eval.metrics import retrieval_metrics
from geoloc.eval.results import with_flat_keys

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder

FULL_GALLERY = "full-gallery"


@dataclass
class Embeddings:
    image_emb: np.ndarray
    text_emb: np.ndarray
    image_keys: list[str]
    text_image_keys: list[str]
    texts: list[str]

    def save(self, path: str | Path) -> None:
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    image_emb=self.image_emb.astype(np.float32),
                    text_emb=self.text_emb.astype(np.float32),
                    image_keys=np.array(self.image_keys, dtype=str),
                    text_image_keys=np.array(self.text_image_keys, dtype=str),
                    texts=np.array(self.texts, dtype=str),
                )


RELEASED_EVAL_TEXT_TEMPLATE = "<|endoftext|>{text}"
RELEASED_EVAL_IMAGE_TEMPLATE = "<|endoftext|>{image}"
"""The released code's evaluation (and validation) collator prefixes `<|endoftext|>` to both the
query and the tile, while its training collator does not: use these to score a model of the
released recipe the way the paper scored it."""


def with_templates(
    encoder: Encoder, text_template: str | None = None, image_template: str | None = None
) -> Encoder:
    """The same encoder (same weights, same modules) with other input templates, for one evaluation.

    A saved encoder records the templates it was trained with in its spec, and loading uses them.
    An evaluation may score it with others instead (`geoloc eval --text-template ...`): the
    returned encoder's spec names the templates it uses, so the embedding cache keys them, and
    the saved model on disk is untouched. None keeps a template as it is.
    """
    spec = encoder.spec
    changed = dataclasses.replace(
        spec,
        text_template=spec.text_template if text_template is None else text_template,
        image_template=spec.image_template if image_template is None else image_template,
    )
    if changed == spec:
        return encoder
    # The same weights: only the template token ids differ (a dual encoder refuses an image
    # template, having no image prompt).
    return encoder.rebuilt(spec=changed)


def embed_dataset(
    encoder: Encoder, dataset: Dataset, batch_size: int = 32, show_progress: bool | None = None
) -> Embeddings:
    texts, image_index = dataset.texts_with_image_index()
    image_emb = encoder.encode_images([r.image for r in dataset.records], batch_size, show_progress)
    text_emb = encoder.encode_text(texts, batch_size, show_progress)
    keys = [r.key for r in dataset.records]
    return Embeddings(image_emb, text_emb, keys, [keys[i] for i in image_index], texts)


def score(embeddings: Embeddings, dataset: Dataset) -> dict[str, Any]:
    groups = dataset.groups
    _, image_index = dataset.texts_with_image_index()
    metrics = retrieval_metrics(
        embeddings.text_emb, embeddings.image_emb, [groups[i] for i in image_index], groups
    )
    return with_flat_keys({"protocol": FULL_GALLERY, **metrics})


def evaluate(
    encoder: Encoder, dataset: Dataset, batch_size: int = 32, show_progress: bool | None = None
) -> tuple[dict[str, Any], Embeddings]:
    embeddings = embed_dataset(encoder, dataset, batch_size, show_progress)
    return score(embeddings, dataset), embeddings


def format_table(metrics: dict[str, Any], title: str | None = None) -> str:
    """The recalls as a Markdown table, in the layout of the papers' tables."""
    t2i, i2t = metrics["text_to_image"], metrics["image_to_text"]
    ks = list(t2i)
    header = "| " + " | ".join([f"T2I {k}" for k in ks] + [f"I2T {k}" for k in ks] + ["mean"]) + " |"
    rule = "|" + "---|" * (2 * len(ks) + 1)
    row = (
        "| "
        + " | ".join(
            [f"{t2i[k]:.2f}" for k in ks] + [f"{i2t[k]:.2f}" for k in ks] + [f"{metrics['mean']:.2f}"]
        )
        + " |"
    )
    lines = [title] if title else []
    lines += [
        f"protocol: {metrics['protocol']}  ({metrics['n_texts']} texts, {metrics['n_images']} images)",
        header,
        rule,
        row,
    ]
    return "\n".join(lines)
