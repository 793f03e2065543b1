"""The exported query side (encoder/query_tower.py): ONNX Runtime and the `tokenizers` library give
the encoder's own token ids and vectors, adapters included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.query_tower import GRAPH, SETTINGS, QueryTower, export_query_tower, exportable
from geoloc.encoder.tuning import TuningConfig
from geoloc.errors import GeolocError

TEXTS = [
    "a red building by a pond",
    "  spaces  around  ",
    "ünïcødé: 北京的公园, café au lait",
    "tab\tand\nnew line",
    "a very long description " * 200,  # past max_text_tokens: the text is cut, the template kept
    "x",
]


def _lora_encoder(padding_side: str) -> MllmEncoder:
    torch.manual_seed(0)
    encoder = MllmEncoder.load(
        "tiny-smolvlm",
        spec_overrides={"tuning": TuningConfig(strategy="lora", rank=4), "padding_side": padding_side},
    )
    with torch.no_grad():
        for name, parameter in encoder.backbone.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: the adapter would change nothing
                parameter.normal_(std=0.05)
    return encoder.eval()


@pytest.fixture(scope="module", params=["right", "left"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    encoder = _lora_encoder(request.param).train()
    folder = export_query_tower(encoder, tmp_path_factory.mktemp("tower") / "q", fingerprint="abc")
    assert encoder.training  # exported in eval mode, left as it was
    return encoder.eval(), folder


def test_the_exported_query_side_gives_the_encoders_ids_and_vectors(exported) -> None:
    encoder, folder = exported
    tower = QueryTower.load(folder, threads=1)
    assert tower.fingerprint == "abc" and tower.embedding_dim == encoder.embedding_dim
    ours, theirs = tower.text_builder(TEXTS), encoder.text_inputs(TEXTS)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    for batch_size in (1, 4, len(TEXTS)):  # other batch sizes and lengths than the traced ones
        vectors = tower.encode_text(TEXTS, batch_size=batch_size)
        assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), encoder.embedding_dim)
        np.testing.assert_allclose(vectors, encoder.encode_text(TEXTS, batch_size=batch_size), atol=2e-6)
    assert tower.encode_text([]).shape == (0, encoder.embedding_dim)


def test_the_adapter_is_in_the_exported_graph(exported, tmp_path: Path) -> None:
    """A tower exported without the adapter's effect would give the base model's vectors."""
    encoder, folder = exported
    with encoder.adapter.disable_adapter():
        base = encoder.encode_text(TEXTS[:2])
    assert np.abs(QueryTower.load(folder).encode_text(TEXTS[:2]) - base).max() > 1e-3


def test_a_damaged_tower_is_refused_naming_its_folder(exported, tmp_path: Path) -> None:
    _, folder = exported
    for name, damage in ((GRAPH, b"not a graph"), (SETTINGS, b"{")):
        broken = tmp_path / name
        broken.mkdir()
        for file in folder.iterdir():
            (broken / file.name).write_bytes(file.read_bytes())
        (broken / name).write_bytes(damage)
        with pytest.raises(GeolocError, match=f"{broken}: unreadable query tower"):
            QueryTower.load(broken)


def test_only_a_float32_mllm_on_the_cpu_is_exported(tmp_path: Path) -> None:
    encoder = MllmEncoder.load("tiny-smolvlm", dtype="bfloat16")
    assert not exportable(encoder)
    with pytest.raises(GeolocError, match="only a float32 MLLM encoder"):
        export_query_tower(encoder, tmp_path / "q")
    assert not (tmp_path / "q").exists()
