"""Loading either encoder kind from one path: a source is resolved once, a tiny preset's tokenizer
is trained once, and a source of the other kind is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoloc.encoder import presets, sources
from geoloc.encoder.dual import DualEncoder
from geoloc.encoder.families import FAMILIES, DualFamily, MllmFamily
from geoloc.encoder.loading import load_encoder
from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.tuning import TARGET_SETS
from geoloc.errors import GeolocError


def test_one_registry_serves_both_kinds() -> None:
    kinds = {name: family.kind for name, family in FAMILIES.items()}
    assert kinds == {
        "smolvlm": "mllm",
        "smolvlm2": "mllm",
        "internvl": "mllm",
        "clip": "dual",
        "siglip": "dual",
    }
    for family in FAMILIES.values():
        assert isinstance(family, MllmFamily if family.kind == "mllm" else DualFamily)
        assert tuple(family.adapter_targets()) == TARGET_SETS


@pytest.mark.parametrize("preset", ["tiny-smolvlm", "tiny-clip"])
def test_a_tiny_presets_tokenizer_is_trained_once_per_load(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    train = presets.build_tokenizer

    def counted(extra_special: list[str], vocab_size: int = 800) -> object:
        calls.append(extra_special)
        return train(extra_special, vocab_size)

    monkeypatch.setattr(presets, "build_tokenizer", counted)
    load_encoder(preset)
    assert len(calls) == 1


def test_a_saved_spec_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    DualEncoder.load("tiny-siglip").save(tmp_path / "saved")
    reads: list[Path] = []
    read = sources.read_saved_spec

    def counted(path: Path) -> object:
        reads.append(path)
        return read(path)

    monkeypatch.setattr(sources, "read_saved_spec", counted)
    encoder = load_encoder(tmp_path / "saved")
    assert isinstance(encoder, DualEncoder) and reads == [tmp_path / "saved"]


def test_a_source_of_the_other_kind_is_refused_by_name() -> None:
    with pytest.raises(GeolocError, match="'tiny-clip' is a CLIP / SigLIP dual encoder, not an MLLM"):
        MllmEncoder.load("tiny-clip")
    with pytest.raises(GeolocError, match="'tiny-internvl' is an MLLM, not a CLIP / SigLIP dual encoder"):
        DualEncoder.load("tiny-internvl")
