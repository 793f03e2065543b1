"""`geoloc train` (train/commands.py), in its own process as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geoloc.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_train_command_and_resume(tiny_city: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{backbone: tiny-smolvlm}}\ntuning: {{strategy: full}}\ndata: {{train: {tiny_city}}}\n"
        "train: {epochs: 1, batch_size: 16, lr: 1.0e-3, progress: false}\n"
    )
    run = tmp_path / "run"
    result = _run("train", str(config), "--out", str(run), "--set", "train.max_steps=1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 1
    again = _run("train", str(config), "--out", str(run), "--set", "train.max_steps=2", "--resume")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["steps"] == 2
