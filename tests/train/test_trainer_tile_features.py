"""Training with cached tile features: same updates as computing them, and refused where impossible."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geoloc.config import config_from_dict
from geoloc.errors import ConfigError
from geoloc.train.trainer import train


def _config(city: Path, features: str, feature_dir: Path, targets: str = "llm-attn") -> object:
    return config_from_dict(
        {
            "model": {"backbone": "tiny-smolvlm"},
            "tuning": {"strategy": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "targets": targets},
            "data": {"train": str(city)},
            "train": {
                "epochs": 1, "max_steps": 2, "batch_size": 8, "lr": 1e-3, "save_every": 0,
                "progress": False, "device": "cpu", "tile_features": features,
                "tile_feature_dir": str(feature_dir),
            },
        }
    )  # fmt: skip


def test_cached_and_computed_features_train_alike(tiny_city: Path, tmp_path: Path) -> None:
    train(_config(tiny_city, "compute", tmp_path / "features"), tmp_path / "computed")
    assert not (tmp_path / "features").exists()
    train(_config(tiny_city, "auto", tmp_path / "features"), tmp_path / "cached")
    assert len(list((tmp_path / "features").rglob("*.npy"))) > 0
    a = load_file(str(tmp_path / "computed" / "final" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cached" / "final" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5, msg=name)


def test_caching_is_refused_when_the_vision_tower_is_adapted(tiny_city: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="frozen vision tower"):
        train(_config(tiny_city, "cache", tmp_path / "f", targets="paper"), tmp_path / "run")
    # auto quietly computes them instead
    train(_config(tiny_city, "auto", tmp_path / "f", targets="paper"), tmp_path / "run2")
    assert not (tmp_path / "f").exists()
