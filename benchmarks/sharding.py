"""Parameter memory per process with DDP and with FSDP (train.sharding), measured by training.

    python benchmarks/sharding.py [--model random-smolvlm-256m] [--processes 2] [--steps 2]
                                  [--tuning paper|llm-attn]

Trains the real-size model (random weights) for a few steps on a small synthetic set, once with
`train.sharding: ddp` and once with `fsdp`, each under `torchrun --nproc_per_node N` on this
machine's CPUs (gloo), and reads back from each run's metrics.jsonl the bytes of parameters the
first process holds, the step rate and the losses (which must agree: sharding changes where
weights live, not what is computed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

TORCHRUN = Path(sys.executable).parent / "torchrun"
TUNINGS = {
    # The paper's adapters: DoRA on both towers (the vision tower stays whole, see sharding.py).
    "paper": {"strategy": "dora", "rank": 16, "alpha": 128, "dropout": 0.0, "targets": "paper"},
    # LoRA on the language model's attention only: far less activation memory on a CPU.
    "llm-attn": {"strategy": "lora", "rank": 16, "alpha": 32, "dropout": 0.0, "targets": "llm-attn"},
}


def _run(args: argparse.Namespace, data: Path, out: Path, sharding: str) -> list[dict]:
    config = {
        "model": {"backbone": args.model},
        "tuning": TUNINGS[args.tuning],
        "data": {"train": str(data / "manifest.jsonl")},
        "train": {
            "epochs": 1, "max_steps": args.steps, "batch_size": args.batch, "log_every": 1,
            "save_every": 0, "progress": False, "device": "cpu", "precision": "float32",
            "sharding": sharding,
        },
    }  # fmt: skip
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node", str(args.processes),
        "-m", "geoloc", "train", str(path), "--out", str(out),
    ]  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // args.processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{sharding} run failed:\n{done.stderr[-3000:]}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "train"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="random-smolvlm-256m")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tuning", choices=sorted(TUNINGS), default="paper")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run(
            [sys.executable, "-m", "geoloc", "synth", str(data), "--tiles", str(4 * args.batch)], check=True
        )
        runs = {s: _run(args, data, Path(tmp) / s, s) for s in ("ddp", "fsdp")}
    print(f"{args.model} (random weights, float32), tuning {args.tuning}, {args.processes} processes (gloo),")
    print(f"global batch {args.batch}, {args.steps} steps")
    print()
    print("| sharding | parameters per process (MiB) | pairs/s (last step) | losses |")
    print("|---|---:|---:|---|")
    for sharding, logs in runs.items():
        mib = logs[0]["parameter_bytes_per_process"] / 2**20
        losses = ", ".join(f"{r['loss']:.5f}" for r in logs)
        print(f"| {sharding} | {mib:.1f} | {logs[-1]['pairs_per_s']:.2f} | {losses} |")
    ddp, fsdp = (runs[s][0]["parameter_bytes_per_process"] for s in ("ddp", "fsdp"))
    gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(runs["ddp"], runs["fsdp"], strict=True))
    print()
    share = 100 * fsdp / ddp
    print(f"fsdp holds {share:.1f} % of ddp's parameter bytes per process; largest loss gap {gap:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
