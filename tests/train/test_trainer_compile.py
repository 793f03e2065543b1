"""train.compile: the encoder's forward through torch.compile gives eager mode's losses.

The tests trace with the aot_eager backend (the same forward and backward graphs, without
generating kernels, which takes minutes on a CPU); benchmarks/compile_step.py runs inductor and
docs/scale.md has its figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geoloc.config import config_from_dict
from geoloc.train.trainer import train


def _run(data: Path, run: Path, backbone: str, compile_step: bool) -> tuple[list[float], dict]:
    """(logged losses, the adapter weights after the step): the forward and the backward alike."""
    config = config_from_dict(
        {
            "model": {"backbone": backbone},
            "tuning": {"strategy": "lora", "rank": 4, "dropout": 0.0, "init": "gaussian"},
            "loss": {"temperature": 0.05},
            "data": {"train": str(data), "val_fraction": 0},
            "train": {
                "max_steps": 1,
                "batch_size": 8,
                "lr": 1e-3,
                "log_every": 1,
                "progress": False,
                "device": "cpu",
                "precision": "float32",
                "num_workers": 0,
                "compile": compile_step,
                "compile_backend": "aot_eager",
            },
        }
    )
    train(config, run)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    adapter = load_file(str(run / "final" / "adapter" / "adapter_model.safetensors"))
    return [line["loss"] for line in lines if line["type"] == "train"], adapter


@pytest.mark.parametrize("backbone", ["tiny-smolvlm", "tiny-internvl"])
def test_compiled_steps_give_eager_losses(backbone: str, tiny_city: Path, tmp_path: Path) -> None:
    eager, eager_weights = _run(tiny_city, tmp_path / "eager", backbone, compile_step=False)
    compiled, compiled_weights = _run(tiny_city, tmp_path / "compiled", backbone, compile_step=True)
    assert len(eager) == len(compiled) == 1
    assert compiled == pytest.approx(eager, abs=1e-4)
    assert eager_weights.keys() == compiled_weights.keys()
    for name, weight in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], weight, atol=1e-4, rtol=0)
