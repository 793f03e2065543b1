"""Partners for nearby and mined batches, and the trainer's mined epochs: the group guarantee,
exact resume, and mining that reads cached tile features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from geoloc.config import config_from_dict
from geoloc.data.manifest import Record
from geoloc.distance import haversine_km
from geoloc.encoder.mllm import MllmEncoder
from geoloc.errors import ConfigError
from geoloc.train import trainer as trainer_module
from geoloc.train.mining import confusable_tiles, nearest_tiles, tile_positions
from geoloc.train.trainer import CHECKPOINT, Trainer, train


def test_nearest_tiles_are_the_great_circle_nearest_of_other_groups_across_180_degrees() -> None:
    rng = np.random.default_rng(1)
    lat_lon = np.stack([rng.uniform(-30, 30, 50), rng.uniform(170, 190, 50)], 1)
    lat_lon[:, 1] = (lat_lon[:, 1] + 180) % 360 - 180  # half of them just past 180: negative
    groups = [str(i // 2) for i in range(50)]
    got = nearest_tiles(lat_lon, groups, 5)
    for i in range(50):
        km = haversine_km(lat_lon[i, 0], lat_lon[i, 1], lat_lon[:, 0], lat_lon[:, 1])
        km[[j for j in range(50) if groups[j] == groups[i]]] = np.inf
        np.testing.assert_allclose(km[got[i]], np.sort(km)[:5], rtol=1e-9)


def test_confusable_tiles_rank_by_score_and_skip_the_texts_own_group() -> None:
    rng = np.random.default_rng(2)
    texts, tiles = rng.normal(size=(30, 8)), rng.normal(size=(10, 8))
    text_groups = [str(i % 10) for i in range(30)]
    tile_groups = [str(i) for i in range(10)]
    got = confusable_tiles(texts, tiles, text_groups, tile_groups, 3)
    scores = texts @ tiles.T
    for t in range(30):
        scores[t, int(text_groups[t])] = -np.inf
        assert list(got[t]) == list(np.argsort(-scores[t])[:3])


def test_nearby_needs_every_records_position_and_names_the_first_without() -> None:
    records = [
        Record("a.png", Path("a.png"), ("x",), "a", 1.0, 2.0),
        Record("b.png", Path("b.png"), ("y",), "b"),
    ]
    with pytest.raises(ConfigError, match="train.batching: nearby.*'b.png'"):
        tile_positions(records, "train.batching: nearby")


def _config(city: Path, **train: object) -> object:
    return config_from_dict(
        {
            "model": {"backbone": "tiny-smolvlm"},
            "tuning": {"strategy": "full"},
            "loss": {"temperature": 0.05, "direction": "symmetric"},
            "data": {"train": str(city)},
            "train": {
                "epochs": 2, "batch_size": 8, "lr": 1e-3, "save_every": 1000, "log_every": 1,
                "progress": False, "device": "cpu", "num_workers": 0, **train,
            },
        }
    )  # fmt: skip


@pytest.mark.parametrize("batching", ["nearby", "mined"])
def test_every_method_plans_each_item_once_and_no_group_twice(
    tiny_city: Path, tmp_path: Path, batching: str
) -> None:
    trainer = Trainer(_config(tiny_city, batching=batching, negative_min_km=0.1), tmp_path / "run")
    trainer.build()
    plan = trainer.plan_epoch()
    assert sorted(i for batch in plan for i in batch) == list(range(len(trainer.texts)))
    positions = trainer.text_positions
    for batch in plan:
        assert len(batch) <= 8
        assert len({trainer.text_groups[i] for i in batch}) == len(batch)
        for a in batch:
            others = [b for b in batch if b != a]
            if others:
                km = haversine_km(*positions[a], positions[others, 0], positions[others, 1])
                assert km.min() >= 0.1
    # Items brought in as partners: some batch holds tiles that are each other's neighbours.
    random_plan = Trainer(_config(tiny_city, negative_min_km=0.1), tmp_path / "random")
    random_plan.build()
    assert plan != random_plan.plan_epoch()


class _Crash(Exception):
    pass


def test_a_mined_run_resumes_to_the_uninterrupted_result(
    tiny_city: Path, tmp_path: Path, monkeypatch
) -> None:
    # Mined at each epoch's start and every 4 steps; the checkpoint of step 6 falls between two
    # minings, so the resumed run must take the saved plan, not mine afresh.
    config = _config(tiny_city, batching="mined", mine_every=4, save_every=6, max_steps=12)
    train(config, tmp_path / "straight")

    real_step = trainer_module.Trainer.train_step
    calls = {"n": 0}

    def crashing_step(self, batch, *inputs):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 8:
            raise _Crash()
        return real_step(self, batch, *inputs)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", crashing_step)
    with pytest.raises(_Crash):
        train(config, tmp_path / "crashed")
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    train(config, tmp_path / "crashed", resume=True)

    def logs(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    straight, resumed = logs("straight"), logs("crashed")
    assert [r["step"] for r in straight if r["type"] == "mining"] == [0, 4, 8]
    assert [r["step"] for r in resumed if r["type"] == "mining"] == [0, 4, 8]
    assert [r["loss"] for r in straight if r["type"] == "train"] == [
        r["loss"] for r in resumed if r["type"] == "train"
    ]
    a = load_file(str(tmp_path / "straight" / "final" / "backbone" / "model.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "final" / "backbone" / "model.safetensors"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    saved = torch.load(tmp_path / "crashed" / CHECKPOINT / "trainer_state.pt", weights_only=True)
    assert saved["plan_epoch"] == 0 and saved["mined_step"] == 8


def test_mining_reads_cached_tile_features(tiny_city: Path, tmp_path: Path, monkeypatch) -> None:
    """With the vision side frozen, every tile goes through the vision tower once, into the
    feature store; mining (here before every step) and training read it from there."""
    tiles_seen = {"n": 0}
    real_features = MllmEncoder.image_features

    def counting(self, pixel_inputs):  # noqa: ANN001, ANN202
        tiles_seen["n"] += pixel_inputs["pixel_values"].shape[0]
        return real_features(self, pixel_inputs)

    monkeypatch.setattr(MllmEncoder, "image_features", counting)
    config = config_from_dict(
        {
            "model": {"backbone": "tiny-smolvlm"},
            "tuning": {"strategy": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "targets": "llm-attn"},
            "data": {"train": str(tiny_city), "val_fraction": 0},
            "train": {
                "epochs": 1, "max_steps": 3, "batch_size": 8, "save_every": 0, "progress": False,
                "device": "cpu", "num_workers": 0, "tile_features": "cache", "batching": "mined",
                "mine_every": 1, "tile_feature_dir": str(tmp_path / "features"),
            },
        }
    )  # fmt: skip
    train(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "mining"] == [0, 1, 2]
    assert tiles_seen["n"] == len(list((tmp_path / "features").rglob("*.npy"))) > 0


def test_mining_starts_after_its_warm_up_and_the_steps_before_are_random_batches(
    tiny_city: Path, tmp_path: Path
) -> None:
    # 8 steps, half of them warm-up: random batches for steps 1-4, mined from step 4 on.
    warm = train(_config(tiny_city, batching="mined", mining_warmup=0.5, max_steps=8), tmp_path / "warm")
    plain = train(_config(tiny_city, max_steps=8), tmp_path / "random")
    assert warm["steps"] == plain["steps"] == 8

    def logs(run: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert [r["step"] for r in logs("warm") if r["type"] == "mining"] == [4]
    warm_losses = [r["loss"] for r in logs("warm") if r["type"] == "train"]
    random_losses = [r["loss"] for r in logs("random") if r["type"] == "train"]
    assert warm_losses[:4] == random_losses[:4]  # the same batches, the same model
    assert warm_losses[4:] != random_losses[4:]
