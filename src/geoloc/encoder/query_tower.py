"""The query side of an MLLM encoder, exported to ONNX, for a server that starts in seconds.

A text query runs only the language model over the query's tokens, the pooling and the
normalisation. Reaching that through transformers costs a server most of its start (importing
transformers' modules, about 2 s here, before any weight is read). `export_query_tower` writes
that path once, with torch's ONNX exporter: the graph and its weights, the tokenizer
(`tokenizer.json`) and the text framing (template tokens, length limit, padding).
`QueryTower.load` runs it with ONNX Runtime and the `tokenizers` library, without transformers.

    export_query_tower(encoder, folder)      # once a model: about 80 s for SmolVLM-256M here
    tower = QueryTower.load(folder)          # then under a second
    tower.encode_text(["a red building"])    # the encoder's vectors, to about 1e-6

Token ids are the encoder's own: the same `TextInputs` frames the same tokenizer (its Rust
backend, which transformers' fast tokenizers call). Only float32 MLLM encoders on the CPU are
exported (`exportable`); adapters are exported as they are, not merged.

ONNX files are data (protocol buffers): loading one runs no code from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geoloc.encoder.inputs import TextInputs
from geoloc.errors import GeolocError

GRAPH = "query_tower.onnx"
SETTINGS = "query_tower.json"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1
_INPUTS = ("input_ids", "attention_mask")
_OUTPUT = "query_vector"  # not "embedding": the graph has a node of that name


def exportable(encoder: Any) -> bool:
    """Whether `encoder`'s query side can be exported: an MLLM encoder, float32, on the CPU, whose
    tokenizer has a `tokenizers` backend."""
    from geoloc.encoder.mllm import MllmEncoder

    return (
        isinstance(encoder, MllmEncoder)
        and encoder.dtype == torch.float32
        and encoder.device.type == "cpu"
        and getattr(encoder.tokenizer, "backend_tokenizer", None) is not None
    )


class _QueryPath(nn.Module):
    """The encoder's forward pass on text inputs, with the inputs as separate tensors."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder({"input_ids": input_ids, "attention_mask": attention_mask})


def export_query_tower(encoder: Any, folder: str | Path, fingerprint: str = "") -> Path:
    """Write `encoder`'s query side to `folder` (replaced whole, or not at all).

    `fingerprint` (the model's, from `model_fingerprint`) is kept with it, so that a user of the
    folder can check which model it came from.
    """
    from geoloc.atomic import atomic_dir

    if not exportable(encoder):
        raise GeolocError("only a float32 MLLM encoder on the CPU can export its query side")
    builder: TextInputs = encoder.text_builder
    example = builder(["a query to trace the graph with", "two words"])  # two rows, padded
    dims = {0: "batch", 1: "length"}
    was_training = encoder.training
    with atomic_dir(folder) as tmp, torch.no_grad(), _quiet():
        try:
            program = torch.onnx.export(
                _QueryPath(encoder).eval(),
                tuple(example[name] for name in _INPUTS),
                input_names=list(_INPUTS),
                output_names=[_OUTPUT],
                dynamic_shapes=(dims, dims),
                dynamo=True,
            )
        finally:
            encoder.train(was_training)
        if program is None:
            raise GeolocError("torch.onnx.export gave no program")
        program.save(str(tmp / GRAPH), external_data=True)  # weights beside it: over protobuf's 2 GB
        encoder.tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER))
        settings = {
            "format_version": FORMAT_VERSION,
            "dimension": int(encoder.embedding_dim),
            "fingerprint": fingerprint,
            "pad_token_id": builder.tokenizer.pad_token_id,
            "text": {
                field.name: getattr(builder, field.name)
                for field in dataclasses.fields(builder)
                if field.name != "tokenizer"
            },
        }
        (tmp / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return Path(folder)


@contextlib.contextmanager
def _quiet():
    """The exporter reports each of its steps on stdout, and warns and logs about its internals
    (such as torchvision's operators it skips: geoloc never installs torchvision)."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


@dataclasses.dataclass
class _BackendTokenizer:
    """What `TextInputs` asks of a tokenizer, from a `tokenizers.Tokenizer`."""

    backend: Any
    pad_token_id: int | None

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        return {"input_ids": [encoding.ids for encoding in encodings]}


class QueryTower:
    """An exported query side: texts to the encoder's unit vectors, with ONNX Runtime."""

    def __init__(self, session: Any, text_builder: TextInputs, dimension: int, fingerprint: str):
        self.session = session
        self.text_builder = text_builder
        self.embedding_dim = dimension
        self.fingerprint = fingerprint

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> QueryTower:
        """Open an exported query side; `threads` for ONNX Runtime (default: torch's)."""
        import onnxruntime
        from tokenizers import Tokenizer

        folder = Path(folder)
        try:
            settings = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
            if settings.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {settings.get('format_version')}, not {FORMAT_VERSION}")
            backend = Tokenizer.from_file(str(folder / TOKENIZER))
            backend.no_truncation()  # the framing cuts the text; the file may carry other settings
            backend.no_padding()
            text = settings["text"] | {"length_buckets": tuple(settings["text"]["length_buckets"])}
            builder = TextInputs(_BackendTokenizer(backend, settings["pad_token_id"]), **text)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(folder / GRAPH), options, providers=["CPUExecutionProvider"]
            )
        # `tokenizers` and ONNX Runtime raise bare Exception / RuntimeError subclasses on a bad file.
        except Exception as error:
            raise GeolocError(f"{folder}: unreadable query tower ({error})") from error
        return cls(session, builder, int(settings["dimension"]), str(settings["fingerprint"]))

    def encode_text(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, `batch_size` texts a run."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = [np.zeros((0, self.embedding_dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            inputs = self.text_builder(texts[start : start + batch_size])
            feed = {name: inputs[name].numpy() for name in _INPUTS}
            out.append(np.asarray(self.session.run([_OUTPUT], feed)[0], dtype=np.float32))
        return np.concatenate(out)
