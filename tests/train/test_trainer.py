"""The training run on the synthetic city: learning, outputs, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geoloc.config import config_from_dict, load_config
from geoloc.data.manifest import read_manifest
from geoloc.encoder.card import read_facts
from geoloc.encoder.mllm import MllmEncoder
from geoloc.errors import ConfigError, GeolocError
from geoloc.eval.evaluate import evaluate
from geoloc.train import trainer as trainer_module
from geoloc.train.splits import carve_splits
from geoloc.train.trainer import CHECKPOINT, train


def _config(data: Path, **train: object) -> object:
    settings = {
        "epochs": 4,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_ratio": 0.05,
        "save_every": 1000,
        "log_every": 5,
        "progress": False,
        **train,
    }
    return config_from_dict(
        {
            "model": {"backbone": "tiny-smolvlm"},
            "tuning": {"strategy": "full"},
            "loss": {"temperature": 0.05, "direction": "symmetric"},
            "data": {"train": str(data)},
            "train": settings,
        }
    )


def test_short_run_raises_held_out_recall(small_city: Path, tmp_path: Path) -> None:
    test = read_manifest(small_city, split="test")
    before, _ = evaluate(MllmEncoder.load("tiny-smolvlm"), test, show_progress=False)
    result = train(_config(small_city, epochs=8), tmp_path / "run")
    after, _ = evaluate(MllmEncoder.load(tmp_path / "run"), test, show_progress=False)
    assert result["steps"] > 0
    # 20 test tiles: chance R@1 is 5 %. A few epochs take it well past that.
    assert after["text_to_image"]["R@1"] >= before["text_to_image"]["R@1"] + 10
    assert after["text_to_image"]["R@1"] >= 15

    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "best").is_dir() and (run / "final").is_dir()
    saved = load_config(run / "config.yaml")
    assert saved.train.lr == pytest.approx(1e-3) and saved.data.train == str(small_city)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["type"] for r in records} == {"train", "val"}
    assert all(r["loss"] > 0 for r in records if r["type"] == "train")
    best = json.loads((run / "best.json").read_text())
    assert best["text_to_image"]["R@1"] == max(
        r["text_to_image"]["R@1"] for r in records if r["type"] == "val"
    )
    # The best model's card carries the validation result it was chosen by.
    (card_result,) = [r for r in read_facts(run / "best")["results"] if r["split"] == "val"]
    assert card_result["step"] == best["step"]
    assert card_result["metrics"]["text_to_image_R@1"] == best["text_to_image"]["R@1"]
    assert "val" in (run / "best" / "README.md").read_text()


def test_validation_is_carved_from_training_rows_never_test(small_city: Path) -> None:
    splits = carve_splits(_config(small_city))
    assert {r.split for r in splits.train.records} == {"train"}
    assert {r.split for r in splits.val.records} == {"val"}
    # Without a val split, a seeded share of the training groups is held out.
    config = _config(small_city)
    config.data.val_split = "no-such-split"
    carved = carve_splits(config)
    train_groups = {r.group for r in carved.train.records}
    val_groups = {r.group for r in carved.val.records}
    assert val_groups and not (train_groups & val_groups)
    assert all(r.split == "train" for r in carved.val.records)


class _Crash(Exception):
    pass


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "backbone" / "model.safetensors"))


def test_resume_after_a_crash_gives_identical_weights(tiny_city: Path, tmp_path: Path, monkeypatch) -> None:
    config = _config(tiny_city, epochs=2, batch_size=8, save_every=3, log_every=1)
    train(config, tmp_path / "straight")

    real_step = trainer_module.Trainer.train_step
    calls = {"n": 0}

    def crashing_step(self, batch, *inputs):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint of step 3, in the middle of the run
            raise _Crash()
        return real_step(self, batch, *inputs)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", crashing_step)
    with pytest.raises(_Crash):
        train(config, tmp_path / "crashed")
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    state = torch.load(tmp_path / "crashed" / CHECKPOINT / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3
    train(config, tmp_path / "crashed", resume=True)

    straight, resumed = _weights(tmp_path / "straight" / "final"), _weights(tmp_path / "crashed" / "final")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert json.loads((tmp_path / "straight" / "best.json").read_text()) == json.loads(
        (tmp_path / "crashed" / "best.json").read_text()
    )


def test_existing_run_is_not_overwritten_without_resume(tiny_city: Path, tmp_path: Path) -> None:
    """A folder with a metrics.jsonl holds a run: the guard needs no training, only that file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"type": "step", "step": 0}\n')
    config = _config(tiny_city, epochs=1, batch_size=16, max_steps=1)
    with pytest.raises(GeolocError, match="already holds a run; pass --resume"):
        train(config, run)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]  # nothing else written


def test_unknown_sharding_is_refused_when_the_config_is_read(tiny_city: Path) -> None:
    with pytest.raises(ConfigError, match="train.sharding: 'zero3' is not one of ddp, fsdp"):
        _config(tiny_city, epochs=1, batch_size=16, max_steps=1, sharding="zero3")


class _FakeCuda:
    """Two CUDA devices' generators, standing in for torch.cuda on a CPU-only machine."""

    def __init__(self) -> None:
        self.states = [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 9, dtype=torch.uint8)]
        self.restored: list[torch.Tensor] | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self._set)

    def _set(self, states: list[torch.Tensor]) -> None:
        self.restored = [s.clone() for s in states]


def test_rng_state_holds_the_cpu_and_every_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeCuda()
    fake.install(monkeypatch)
    state = trainer_module.rng_state()
    assert torch.equal(state["cpu"], torch.get_rng_state())
    assert [s.tolist() for s in state["cuda"]] == [s.tolist() for s in fake.states]
    torch.rand(3)  # the CPU generator moves on
    trainer_module.set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), state["cpu"])
    assert [s.tolist() for s in fake.restored] == [s.tolist() for s in fake.states]


def test_rng_state_on_other_devices_warns_and_keeps_the_cpu_state(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeCuda()
    fake.install(monkeypatch)
    state = trainer_module.rng_state()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.warns(UserWarning, match="2 CUDA device"):
        trainer_module.set_rng_state(state)
    assert fake.restored is None and torch.equal(torch.get_rng_state(), state["cpu"])


def test_checkpoint_restores_every_devices_random_state(
    tiny_city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: only the CPU generator was saved, so LoRA dropout on a GPU differed after --resume."""
    config = _config(tiny_city, epochs=1, batch_size=16, max_steps=1)
    trainer = trainer_module.Trainer(config, tmp_path / "run")
    trainer.run()
    fake = _FakeCuda()
    with monkeypatch.context() as patched:
        fake.install(patched)
        trainer.save_checkpoint()  # as a GPU run would write it
    checkpoint = tmp_path / "run" / CHECKPOINT
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert [s.tolist() for s in state["rng_per_process"][0]["cuda"]] == [s.tolist() for s in fake.states]

    resumed = trainer_module.Trainer(config, tmp_path / "run")
    resumed.build(checkpoint)
    with monkeypatch.context() as patched:
        fake.install(patched)
        resumed.restore(checkpoint)
    assert fake.restored is not None
    assert [s.tolist() for s in fake.restored] == [s.tolist() for s in fake.states]
    assert torch.equal(torch.get_rng_state(), state["rng_per_process"][0]["cpu"])


def test_lora_run_saves_adapter_only_and_reloads(tiny_city: Path, tmp_path: Path) -> None:
    config = _config(tiny_city, epochs=1, batch_size=16, max_steps=2)
    config.tuning.strategy = "lora"
    config.tuning.init = "gaussian"
    train(config, tmp_path / "run")
    best = tmp_path / "run" / "best"
    assert (best / "adapter" / "adapter_model.safetensors").is_file()
    assert not (best / "backbone").exists()
    encoder = MllmEncoder.load(tmp_path / "run")
    vectors = encoder.encode_text(["a red building in the centre"])
    assert vectors.shape == (1, 128) and abs(float((vectors**2).sum()) - 1) < 1e-5


@pytest.mark.parametrize(
    "overrides",
    [
        {"precision": "bfloat16", "gradient_checkpointing": True, "strategy": "dora", "pooling": "query"},
        {"precision": "float32", "gradient_checkpointing": False, "strategy": "lora", "pooling": "mean"},
    ],
)
def test_one_step_updates_adapters_under_each_setting(
    tiny_city: Path, tmp_path: Path, overrides: dict
) -> None:
    config = _config(tiny_city, epochs=1, batch_size=8, max_steps=1)
    config.train.precision = overrides["precision"]
    config.train.gradient_checkpointing = overrides["gradient_checkpointing"]
    config.tuning.strategy = overrides["strategy"]
    config.tuning.init = "gaussian"
    config.model.pooling = overrides["pooling"]
    config.loss.learnable_temperature = True
    trainer = trainer_module.Trainer(config, tmp_path / "run")
    trainer.build()
    before = {n: p.detach().clone() for n, p in trainer.encoder.named_parameters() if p.requires_grad}
    assert before and all("lora" in n or "pooler" in n for n in before)
    trainer.train_step(list(range(8)))
    after = dict(trainer.encoder.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    # lora_B starts at zero and so does its gradient to lora_A; after one step B has moved.
    assert any("lora_B" in n for n in changed)
    assert trainer.loss_fn.log_scale.grad is not None


def test_the_time_budget_stops_on_the_epochs_last_batch_and_a_resume_goes_on(
    tiny_city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.max_minutes running out as an epoch ends closes that epoch and stops: no step of the
    next (it used to train one). A resumed run trains the epochs left, the budget renewed."""
    config = _config(tiny_city, epochs=3, batch_size=16, max_minutes=60.0)
    trainer = trainer_module.Trainer(config, tmp_path / "run")
    at_epoch_end = lambda clock: trainer.state.batch_in_epoch == len(trainer.sampler.batches)  # noqa: E731
    monkeypatch.setattr(trainer_module._RunClock, "past_deadline", at_epoch_end)
    result = trainer.run()
    per_epoch = len(trainer.sampler.batches)
    assert result["stopped_early"] is True and result["steps"] == per_epoch
    assert (trainer.state.epoch, trainer.state.batch_in_epoch) == (1, 0)
    monkeypatch.undo()
    resumed = trainer_module.Trainer(config, tmp_path / "run")
    result = resumed.run(resume=True)
    assert result["stopped_early"] is False and result["steps"] > per_epoch
    assert resumed.state.epoch == 3  # every epoch trained (their lengths may differ by a batch)
