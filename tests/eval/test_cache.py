from pathlib import Path

import numpy as np
import pytest

from geoloc.data.manifest import read_manifest
from geoloc.encoder.mllm import MllmEncoder
from geoloc.eval.cache import cached_embeddings, data_fingerprint, model_fingerprint


@pytest.fixture(scope="module")
def encoder() -> MllmEncoder:
    return MllmEncoder.load("tiny-smolvlm")


def test_second_evaluation_reads_the_cache(
    encoder: MllmEncoder, tiny_city: Path, tmp_path: Path, monkeypatch
) -> None:
    data = read_manifest(tiny_city, split="test")
    first, hit = cached_embeddings(encoder, data, tmp_path)
    assert not hit and len(list(tmp_path.glob("*.npz"))) == 1

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(encoder, "encode_images", no_encoding)
    monkeypatch.setattr(encoder, "encode_text", no_encoding)
    second, hit = cached_embeddings(encoder, data, tmp_path)
    assert hit
    assert np.array_equal(first.image_emb, second.image_emb) and np.array_equal(
        first.text_emb, second.text_emb
    )
    assert first.image_keys == second.image_keys and first.texts == second.texts


def test_key_changes_with_weights_and_data(encoder: MllmEncoder, tiny_city: Path, tmp_path: Path) -> None:
    import shutil

    data = read_manifest(tiny_city, split="test")
    before_model, before_data = model_fingerprint(encoder), data_fingerprint(data)
    other = MllmEncoder.load("tiny-smolvlm", spec_overrides={"text_template": "query: {text}"})
    assert model_fingerprint(other) != before_model
    with_changed_weight = MllmEncoder.load("tiny-smolvlm")
    next(with_changed_weight.parameters()).data.add_(1e-3)
    assert model_fingerprint(with_changed_weight) != before_model

    copy = tmp_path / "copy"
    shutil.copytree(tiny_city.parent, copy)
    moved = read_manifest(copy / "manifest.jsonl", split="test")
    assert data_fingerprint(moved) == before_data  # paths do not matter, content does
    tile = moved.records[0].image
    tile.write_bytes(tile.read_bytes() + b"\0")
    assert data_fingerprint(moved) != before_data


def test_an_int8_encoder_has_its_own_fingerprint() -> None:
    from geoloc.encoder.serving import load_for_serving
    from geoloc.eval.cache import model_fingerprint

    float32 = model_fingerprint(load_for_serving("tiny-smolvlm"))
    int8 = model_fingerprint(load_for_serving("tiny-smolvlm", precision="int8"))
    assert int8 != float32
    assert int8 == model_fingerprint(load_for_serving("tiny-smolvlm", precision="int8"))  # stable


def test_the_fingerprint_ignores_how_a_model_folder_is_spelled(
    encoder: MllmEncoder, tmp_path: Path, monkeypatch
) -> None:
    from geoloc.encoder.presets import preset_processing

    folder = tmp_path / "S"
    encoder.base_model.save_pretrained(folder)
    for part in preset_processing("tiny-smolvlm"):
        part.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    relative, absolute = MllmEncoder.load("S"), MllmEncoder.load(str(folder))
    assert (relative.spec.backbone, absolute.spec.backbone) == ("S", str(folder))
    # Before: the spec's backbone string was hashed, so "S" and its absolute path differed.
    assert model_fingerprint(relative) == model_fingerprint(absolute) == model_fingerprint(encoder)
    relative.save(tmp_path / "saved")  # saved, its spec names the source differently again
    assert model_fingerprint(MllmEncoder.load(tmp_path / "saved")) == model_fingerprint(encoder)
