"""Training with DataLoader workers: the same run as without them, bit for bit; a bad tile found
in a worker stops it with the one-line error; where the time goes is logged."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geoloc.config import config_from_dict
from geoloc.errors import DataError
from geoloc.train import trainer as trainer_module
from geoloc.train.splits import carve_splits
from geoloc.train.trainer import train


def _config(data: Path, **train_settings: object):  # noqa: ANN202
    return config_from_dict(
        {
            "model": {"backbone": "tiny-smolvlm"},
            "tuning": {"strategy": "lora", "rank": 4, "dropout": 0.1, "init": "gaussian"},
            "loss": {"temperature": 0.05, "direction": "symmetric"},
            "data": {"train": str(data), "val_fraction": 0},
            "train": {
                "epochs": 2,
                "max_steps": 5,
                "batch_size": 8,
                "lr": 1e-3,
                "log_every": 1,
                "save_every": 1000,
                "progress": False,
                "device": "cpu",
                "precision": "float32",
                **train_settings,
            },
        }
    )


def test_two_workers_train_bit_identically_to_none(tiny_city: Path, tmp_path: Path) -> None:
    """Dropout on: the workers must not draw from the random state the model's dropout uses."""
    train(_config(tiny_city, num_workers=0), tmp_path / "none")
    train(_config(tiny_city, num_workers=2), tmp_path / "two")
    none = load_file(str(tmp_path / "none" / "final" / "adapter" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "adapter" / "adapter_model.safetensors"))
    assert none.keys() == two.keys() and none
    assert all(torch.equal(none[name], two[name]) for name in none)
    lines = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if line["type"] == "train"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]  # an epoch boundary crossed on the way
    assert all(s["data_wait_s"] >= 0 and s["step_s"] > 0 for s in steps)
    assert not multiprocessing.active_children()


def test_a_bad_tile_found_in_a_worker_stops_the_run_naming_file_and_record(
    tiny_city: Path, tmp_path: Path
) -> None:
    """Reading the data checks every tile; this one breaks after that, as a file on shared
    storage may while a run goes on."""
    city = tmp_path / "city"
    shutil.copytree(tiny_city.parent, city)
    config = _config(city / "manifest.jsonl", num_workers=2, max_steps=20)
    splits = carve_splits(config)
    record = splits.train.records[7]
    tile = Path(record.image)
    tile.write_bytes(tile.read_bytes()[:200])  # its header reads, its pixels are cut off
    with pytest.raises(DataError) as caught:
        train(config, tmp_path / "run", splits=splits)
    message = str(caught.value)
    assert message.startswith(f"{record.image}: record {record.key}: ") and "\n" not in message
    assert not multiprocessing.active_children()


def test_a_run_that_waits_for_data_is_told_once_what_to_raise(
    tiny_city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "DATA_WAIT_WARNING", -1.0)  # any wait at all counts
    with pytest.warns(UserWarning, match=r"raise train.num_workers \(now 0") as caught:
        train(_config(tiny_city, num_workers=0, max_steps=4), tmp_path / "run")
    assert sum("train.num_workers" in str(w.message) for w in caught) == 1
