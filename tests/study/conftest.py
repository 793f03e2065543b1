"""A two-point sweep on the synthetic city, interrupted in its second run and then resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write_sweep(folder: Path, city: Path, **extra: Any) -> Path:
    """A sweep file: tiny-smolvlm, 4 steps of 8 pairs, a checkpoint every 2 steps."""
    spec = {
        "base": str(CONFIGS / "synthetic-tiny.yaml"),
        "set": {
            "data.train": str(city),
            "train.epochs": 1,
            "train.max_steps": 4,
            "train.batch_size": 8,
            "train.save_every": 2,
            "train.log_every": 1,
            "train.eval_every": 0,
            "train.progress": False,
        },
        "grid": {"loss.direction": ["text_to_image", "symmetric"]},
        **extra,
    }
    path = folder / "two-points.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def make_sweep_file() -> Any:
    """write_sweep, for tests that need a sweep file of their own."""
    return write_sweep


@pytest.fixture(scope="session")
def resumed_sweep(small_city: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the sweep, stop it like Ctrl-C at step 3 of its second run, then run it again.

    Returns what was seen at each stage, for the tests to check.
    """
    from geoloc.study.sweep import load_sweep, run_sweep
    from geoloc.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("sweep")
    sweep = load_sweep(write_sweep(folder, small_city))
    out = folder / "out"
    original_step = Trainer.train_step
    seen: dict[str, Any] = {"out": out, "sweep": sweep, "first_log": [], "second_log": [], "steps_run": []}

    def interrupted_step(self: Trainer, batch: list[int], *inputs: Any) -> float:
        if "symmetric" in self.run_dir.name and self.state.step == 2:  # after the step-2 checkpoint
            raise KeyboardInterrupt
        return original_step(self, batch, *inputs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_step", interrupted_step)
        try:
            run_sweep(sweep, out, log=seen["first_log"].append)
        except KeyboardInterrupt:
            seen["interrupted"] = True
    first, second = (out / "runs" / p.name for p in sweep.points)
    seen["after_interrupt"] = {
        "first_result": (first / "result.json").is_file(),
        "second_checkpoint": (second / "checkpoints" / "latest" / "trainer_state.pt").is_file(),
        "second_final": (second / "final").exists(),
        "table": (out / "results.md").read_text(encoding="utf-8"),
        "first_result_mtime": (first / "result.json").stat().st_mtime_ns,
    }

    def counted_step(self: Trainer, batch: list[int], *inputs: Any) -> float:
        seen["steps_run"].append((self.run_dir.name, self.state.step + 1))
        return original_step(self, batch, *inputs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_step", counted_step)
        seen["rows"] = run_sweep(sweep, out, log=seen["second_log"].append)
    return seen
