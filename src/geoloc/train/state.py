"""A training run's progress, saved and restored whole: `TrainState`.

The checkpoint's `trainer_state.pt` holds the state's fields at its top level, beside the
optimizer's, the scheduler's and the loss's own state dicts. A resumed run restores all of it,
so it continues exactly where the interrupted one stood: the same batch of the same epoch, the
same random state on every process, and a metrics file cut back to what had been logged.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

TRAINER_STATE = "trainer_state.pt"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already consumed
    best_primary_metric: float = -1.0  # the best validation primary metric so far; -1: none yet
    elapsed_s: float = 0.0  # training time, summed over every attempt
    rng_per_process: list[dict[str, Any]] = field(default_factory=list)  # rng_state(), in rank order
    metrics_bytes: int = 0  # the size of metrics.jsonl when the state was saved
    # train.batching "mined": the epoch's batches as mined (the model that mined them is gone
    # after a resume), the epoch they plan, and the step they were mined at.
    batches: list[list[int]] = field(default_factory=list)
    plan_epoch: int = -1
    mined_step: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """The state of a saved checkpoint; one written before this class (keys best_r1,
        elapsed, torch_rng) is read too."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "best_r1" in data and "best_primary_metric" not in data:
            values["best_primary_metric"] = data["best_r1"]
        if "elapsed" in data and "elapsed_s" not in data:
            values["elapsed_s"] = data["elapsed"]
        if not values.get("rng_per_process") and "torch_rng" in data:
            values["rng_per_process"] = [{"cpu": data["torch_rng"], "cuda": []}]
        if data.get("metrics_bytes") is None:
            values.pop("metrics_bytes", None)
        return cls(**values)


def read_train_state(checkpoint: Path) -> TrainState:
    """The TrainState of a checkpoint folder (tensors only: weights_only loading)."""
    return TrainState.from_dict(torch.load(checkpoint / TRAINER_STATE, weights_only=True))


def rng_state() -> dict[str, Any]:
    """This process's random state: the CPU generator and every visible CUDA device's.

    Dropout (LoRA's included) on a GPU draws from that device's generator, not the CPU's, so an
    exact resume on GPUs needs both.
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": list(cuda)}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`. The CUDA states go back only onto as many devices as were saved:
    a run resumed elsewhere (on the CPU, or other GPUs) continues, but not bit for bit."""
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda") or []
    if not cuda:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available != len(cuda):
        warnings.warn(
            f"the checkpoint holds the random state of {len(cuda)} CUDA device(s) but {available} "
            "are visible: the resumed run's dropout will not repeat the interrupted one's",
            stacklevel=2,
        )
        return
    torch.cuda.set_rng_state_all(cuda)
