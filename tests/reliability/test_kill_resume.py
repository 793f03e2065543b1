"""Crash-safe training: `geoloc train` killed with SIGKILL at chosen moments, resumed with --resume.

The process kills itself through the GEOLOC_FAULT hook (geoloc.faults) at an exact point, so every
moment is hit deterministically, without timing. One run is killed again and again, at a different
moment each time, and resumed until it finishes; its final adapter, best model and metrics must be
bit-identical to those of a run that was never interrupted (CPU, fixed seed, dropout 0).

Tiles are decoded in two DataLoader workers (train.num_workers: 2), so the kills also check that
no worker outlives its killed run.

Schedule (6 steps, a checkpoint every 2, a validation every 3 and at the end):
    step 1  2:ckpt  3:val  4:ckpt  5  6:val,ckpt  final val, ckpt, final/
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from geoloc.train.trainer import CHECKPOINT, TRAINER_STATE

CONFIG = """\
model: {{backbone: tiny-smolvlm}}
tuning: {{strategy: lora, rank: 4, dropout: 0.0, init: gaussian}}
loss: {{temperature: 0.05, direction: symmetric}}
data: {{train: {data}}}
train: {{epochs: 1, max_steps: 6, batch_size: 8, lr: 1.0e-3, save_every: 2, eval_every: 3, log_every: 1,
         progress: false, device: cpu, precision: float32, seed: 0, num_workers: 2}}
"""
TIMEOUT_S = 180
# Fields that measure time, not training: they differ between any two runs.
TIMING_FIELDS = ("pairs_per_s", "data_wait_s", "step_s")


def _train(config: Path, run: Path, fault: str | None, resume: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEOLOC_FAULT": fault or ""}
    command = [sys.executable, "-m", "geoloc", "train", str(config), "--out", str(run)]
    return subprocess.run(
        command + (["--resume"] if resume else []),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _metrics(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def _processes_of(run: Path) -> list[int]:
    """Live processes whose command line names `run`: a training run and its DataLoader workers."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(run).encode() in (proc / "cmdline").read_bytes():
                status = (proc / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie has exited, only its entry is left
                    pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def _saved_step(run: Path) -> int | None:
    """The step of checkpoints/latest, after checking it is complete; None when there is none.

    A folder under the checkpoint's own name must always be whole: trainer state, encoder spec and
    adapter weights, all readable.
    """
    latest = run / CHECKPOINT
    if not latest.exists():
        return None
    state = torch.load(latest / TRAINER_STATE, weights_only=True)
    assert (latest / "encoder" / "geoloc_encoder.json").is_file()
    assert load_file(str(latest / "encoder" / "adapter" / "adapter_model.safetensors"))
    return int(state["step"])


@pytest.fixture(scope="module")
def config(tiny_city: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("killcfg") / "kill.yaml"
    path.write_text(CONFIG.format(data=json.dumps(str(tiny_city))), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def straight_run(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    done = _train(config, run, None, resume=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


# (fault, checkpoint step expected on disk right after the kill, what the moment is)
KILLS = [
    ("checkpoint.write:1", None, "mid-write of the first checkpoint (encoder written, trainer state not)"),
    ("atomic_dir.swap.latest:1", 2, "(resume starts over) between the renames swapping in checkpoint 4"),
    ("validate:1", 2, "mid-evaluation at step 3: its line already logged"),
    ("train.step:3", 4, "mid-step 5, after the step-4 checkpoint"),
    ("validate:2", 6, "in the final evaluation, after the step-6 checkpoint"),
]


def test_killed_anywhere_and_resumed_equals_the_uninterrupted_run(config: Path, straight_run: Path) -> None:
    run = straight_run.parent.parent / "killed" / "run"
    for attempt, (fault, expected_step, moment) in enumerate(KILLS):
        done = _train(config, run, fault, resume=attempt > 0)
        assert done.returncode == -signal.SIGKILL, f"{fault} ({moment}) did not kill: {done.stderr[-2000:]}"
        # `_train` returns once every holder of the run's output pipes has closed them: the killed
        # process and its workers, which inherit the pipes. A worker that outlived its parent would
        # hold them to the timeout; the workers exit on their own, within torch's 5-s check.
        assert not _processes_of(run), f"{fault}: DataLoader workers still running after the kill"
        assert not (run / "final").exists(), moment
        if fault.startswith("atomic_dir.swap"):
            # Killed between the renames: no folder under the real name, the old one set aside whole.
            assert not (run / CHECKPOINT).exists()
            old = run / CHECKPOINT
            old = old.with_name(f".{old.name}.old")
            assert int(torch.load(old / TRAINER_STATE, weights_only=True)["step"]) == expected_step
        else:
            assert _saved_step(run) == expected_step, moment
    done = _train(config, run, None, resume=True)
    assert done.returncode == 0, done.stderr[-2000:]

    # Weights: the final and best adapters, bit for bit.
    for folder in ("final", "best"):
        straight = load_file(str(straight_run / folder / "adapter" / "adapter_model.safetensors"))
        resumed = load_file(str(run / folder / "adapter" / "adapter_model.safetensors"))
        assert straight.keys() == resumed.keys() and straight
        for name in straight:
            assert torch.equal(straight[name], resumed[name]), f"{folder}: {name}"
    assert json.loads((run / "best.json").read_text()) == json.loads((straight_run / "best.json").read_text())
    # Metrics: every train-loss and validation line once, in order, equal to the last bit
    # (what a killed attempt logged after its last checkpoint is cut on resume, then logged again).
    straight_metrics, resumed_metrics = _metrics(straight_run), _metrics(run)
    assert [(r["type"], r["step"]) for r in straight_metrics] == [
        ("train", 1), ("train", 2), ("train", 3), ("val", 3), ("train", 4), ("train", 5), ("train", 6),
        ("val", 6), ("val", 6),
    ]  # fmt: skip
    assert resumed_metrics == straight_metrics
    # Nothing left that could be taken for a checkpoint: only `latest`, and at most the hidden
    # .latest.*.tmp folders that killed writes left (never read, never renamed into place).
    names = {p.name for p in (run / "checkpoints").iterdir()} - {"latest"}
    assert (run / CHECKPOINT).is_dir() and all(n.startswith(".latest.") and n.endswith(".tmp") for n in names)
