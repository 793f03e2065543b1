"""train.compile against eager mode: losses, steps/s, and how many times it compiles.

    python benchmarks/compile_step.py [--backbone tiny-smolvlm] [--steps 12] [--backend inductor]

Trains the same run twice with `geoloc.train.train` (LoRA, dropout 0, float32, no workers), once
eager and once with `train.compile: true`, and prints each logged loss's largest difference, the
steady steps/s after the first step, and the number of graphs torch.compile built (read from
torch._dynamo's counters: torch has no public counter of compilations).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from geoloc.config import config_from_dict
from geoloc.data.synth import generate_city
from geoloc.train.trainer import train


def run(
    data: Path, out: Path, backbone: str, steps: int, compiled: bool, backend: str
) -> tuple[list[float], float]:
    config = config_from_dict(
        {
            "model": {"backbone": backbone},
            "tuning": {"strategy": "lora", "rank": 4, "dropout": 0.0, "init": "gaussian"},
            "loss": {"temperature": 0.05},
            "data": {"train": str(data), "val_fraction": 0},
            "train": {
                "epochs": 100,
                "max_steps": steps,
                "batch_size": 16,
                "lr": 1e-3,
                "log_every": 1,
                "progress": False,
                "device": "cpu",
                "precision": "float32",
                "num_workers": 0,
                "compile": compiled,
                "compile_backend": backend,
            },
        }
    )
    start = time.perf_counter()
    train(config, out)
    total = time.perf_counter() - start
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_s = [line["step_s"] for line in lines if line["type"] == "train"][1:]
    rate = len(steps_s) / sum(steps_s)
    print(f"  {'compiled' if compiled else 'eager'}: {total:.1f} s in all, {rate:.2f} steps/s after step 1")
    return [line["loss"] for line in lines if line["type"] == "train"], total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="tiny-smolvlm")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--backend", default="inductor", choices=["inductor", "aot_eager"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_city(Path(tmp) / "city", tiles=60, seed=2)
        print(f"{args.backbone}, {args.steps} steps of 16 pairs, backend {args.backend}:")
        eager, _ = run(data, Path(tmp) / "eager", args.backbone, args.steps, False, args.backend)
        compiled, _ = run(data, Path(tmp) / "compiled", args.backbone, args.steps, True, args.backend)
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        largest = max(abs(a - b) for a, b in zip(eager, compiled, strict=True))
        print(f"  largest loss difference over {len(eager)} steps: {largest:.2e}; graphs compiled: {graphs}")
        torch.compiler.reset()


if __name__ == "__main__":
    main()
