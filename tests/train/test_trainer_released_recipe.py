"""The released recipe's optimiser switches, against references written from their description:

- `train.warmup: released`: int(total x ratio) warm-up steps, the factor rising from 0;
  `ceil` (geoloc's): ceil(total x ratio) steps (at least 1), rising from 1/warm-up;
- `train.no_decay: names`: only parameters whose names contain `bias` or `LayerNorm.weight` are
  exempt from weight decay; `ndim` (geoloc's): every 1-D parameter is;
- `model.dtype: bfloat16` with `train.precision: bfloat16`: bf16 weights, bf16-mixed steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from geoloc.config import config_from_dict
from geoloc.train import trainer as trainer_module
from geoloc.train.trainer import decays, lr_factor, warmup_steps


def _config(data: Path | None = None, **sections: dict) -> object:
    base = {
        "model": {"backbone": "tiny-smolvlm"},
        "tuning": {"strategy": "dora", "rank": 4, "alpha": 32, "init": "gaussian", "targets": "paper"},
        "data": {"train": str(data or "")},
        "train": {"lr": 1e-3, "weight_decay": 0.01, "progress": False, "device": "cpu", "save_every": 0},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_from_dict(base)


# --- warm-up --------------------------------------------------------------------------------------


def reference_factors(total: int, ratio: float, rule: str, floor: float, steps: int) -> list[float]:
    """The lr factor of optimizer steps 0..steps-1, from the description of each rule."""
    if rule == "released":
        warm = int(total * ratio)
        rise = [s / warm for s in range(warm)]  # from 0: the first step is at lr 0
    else:
        warm = max(1, math.ceil(total * ratio)) if ratio > 0 else 0
        rise = [(s + 1) / warm for s in range(warm)]  # from 1/warm-up
    decay = [max(floor, 1 - (1 - floor) * (s - warm) / max(1, total - warm)) for s in range(warm, total)]
    return (rise + decay)[:steps]


def scheduled_factors(total: int, ratio: float, rule: str, floor: float, steps: int) -> list[float]:
    """The lr each optimizer step actually uses, with the trainer's `lr_factor` in a LambdaLR (as
    `Trainer.build` schedules it)."""
    config = _config(train={"warmup_ratio": ratio, "warmup": rule, "min_lr_ratio": floor, "lr": 1.0})
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config))
    factors = []
    for _ in range(steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize("rule", ["released", "ceil"])
@pytest.mark.parametrize(("total", "ratio"), [(1000, 0.01), (250, 0.02), (150, 0.01), (50, 0.01), (7, 0.5)])
def test_warmup_first_steps_match_the_reference(rule: str, total: int, ratio: float) -> None:
    steps = min(14, total)
    expected = reference_factors(total, ratio, rule, 1e-3, steps)
    assert scheduled_factors(total, ratio, rule, 1e-3, steps) == pytest.approx(expected, abs=1e-12)


def test_warmup_rules_differ_as_described() -> None:
    # A long run, 1 %: 3,280 steps both ways.
    assert warmup_steps(328_000, 0.01, "released") == warmup_steps(328_000, 0.01, "ceil") == 3280
    # A short run: the released rule truncates to 1 step (at lr 0) or to none at all.
    assert (warmup_steps(150, 0.01, "released"), warmup_steps(150, 0.01, "ceil")) == (1, 2)
    assert (warmup_steps(50, 0.01, "released"), warmup_steps(50, 0.01, "ceil")) == (0, 1)
    released = scheduled_factors(1000, 0.01, "released", 1e-3, 12)
    assert released[:3] == pytest.approx([0.0, 0.1, 0.2]) and released[10] == 1.0
    ceil = scheduled_factors(1000, 0.01, "ceil", 1e-3, 12)
    assert ceil[:3] == pytest.approx([0.1, 0.2, 0.3]) and ceil[9] == 1.0
    # No warm-up at all under the released rule: the first step has the full rate.
    assert scheduled_factors(50, 0.01, "released", 1e-3, 1) == [1.0]


# --- weight decay --------------------------------------------------------------------------------


def reference_decayed(names: list[str]) -> set[str]:
    """The released rule: decay everything but names containing `bias` or `LayerNorm.weight`."""
    return {n for n in names if "bias" not in n and "LayerNorm.weight" not in n}


def decayed_by_trainer(config: object, tmp_path: Path) -> tuple[set[str], list[str]]:
    """(names in the optimizer's decayed group, all trainable names) of a built trainer."""
    trainer = trainer_module.Trainer(config, tmp_path / "run")
    trainer.build()
    names = {id(p): n for n, p in trainer.encoder.named_parameters() if p.requires_grad}
    decayed: set[str] = set()
    for group in trainer.optimizer.param_groups:
        assert group["weight_decay"] in (0.0, 0.01)
        if group["weight_decay"] > 0:
            decayed |= {names[id(p)] for p in group["params"]}
    return decayed, list(names.values())


def test_decay_by_name_on_a_tiny_dora_model(tiny_city: Path, tmp_path: Path) -> None:
    released, names = decayed_by_trainer(_config(tiny_city, train={"no_decay": "names"}), tmp_path / "a")
    assert released == reference_decayed(names)
    magnitudes = {n for n in names if "lora_magnitude_vector" in n}
    assert magnitudes and magnitudes <= released  # DoRA magnitude vectors ARE decayed, as released
    geoloc, _ = decayed_by_trainer(_config(tiny_city, train={"no_decay": "ndim"}), tmp_path / "b")
    assert geoloc == released - magnitudes  # geoloc exempts them: they are 1-D
    assert all("lora_A" in n or "lora_B" in n for n in geoloc)


def test_decay_by_name_exempts_biases_and_layernorm_weights_only() -> None:
    """On BERT-style names the released rule exempts `bias` and `LayerNorm.weight`; other norm
    weights (`input_layernorm.weight`, as SmolVLM and InternVL name theirs) are decayed."""
    model = nn.ModuleDict(
        {
            "dense": nn.Linear(4, 4),
            "LayerNorm": nn.LayerNorm(4),
            "input_layernorm": nn.LayerNorm(4),
            "scale": nn.Embedding(3, 4),
        }
    )
    named = list(model.named_parameters())
    by_name = {n for n, p in named if decays(n, p, "names")}
    assert by_name == reference_decayed([n for n, _ in named])
    assert by_name == {"dense.weight", "input_layernorm.weight", "scale.weight"}
    assert {n for n, p in named if decays(n, p, "ndim")} == {"dense.weight", "scale.weight"}


def test_full_tuning_by_name_matches_the_reference(tiny_city: Path, tmp_path: Path) -> None:
    config = _config(tiny_city, tuning={"strategy": "full"}, train={"no_decay": "names"})
    decayed, names = decayed_by_trainer(config, tmp_path)
    assert decayed == reference_decayed(names)
    assert any(n.endswith(".bias") for n in names) and not any(n.endswith(".bias") for n in decayed)


# --- precision -------------------------------------------------------------------------------------


def test_bf16_weights_with_bf16_mixed_steps(tiny_city: Path, tmp_path: Path) -> None:
    """The released form: the backbone's weights in bf16 and bf16 autocast; the adapters stay
    float32 (peft keeps adapter weights in float32 over a bf16 base), and a step moves them."""
    config = _config(
        tiny_city,
        model={"dtype": "bfloat16"},
        train={"precision": "bfloat16", "batch_size": 8, "max_steps": 1},
    )
    trainer = trainer_module.Trainer(config, tmp_path / "run")
    trainer.build()
    frozen = {p.dtype for p in trainer.encoder.parameters() if not p.requires_grad}
    trainable = {n: p for n, p in trainer.encoder.named_parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    loss = trainer.train_step(list(range(8)))
    assert math.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in trainable.items())
