"""Training throughput of the paper's recipe on real-size backbones (random weights) on one GPU.

Run through benchmarks/gpu.sh. For SmolVLM-256M, SmolVLM-500M and InternVL3.5-1B (every layer and
width of the published models, random weights, bf16): pairs/s, peak GPU memory and model FLOP
utilisation (FLOPs counted by torch's FlopCounterMode over step time, against a bf16 matrix
product measured in the same run), at the paper's batch of 10 and at a larger batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from throughput import PAPER_TUNING, format_table, matmul_tflops, measure_training_step

from geoloc.encoder.loading import load_encoder

MODELS = ("random-smolvlm-256m", "random-smolvlm-500m", "random-internvl3_5-1b")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="10,64", help="batch sizes (pairs), comma-separated")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_train.py: no CUDA GPU is visible to torch; nothing measured", file=sys.stderr)
        return 3
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    matmul = max(matmul_tflops(device, torch.bfloat16, size=8192, repeats=20) for _ in range(2))
    print(f"{name}: bf16 8192^3 matrix product {matmul:.0f} TFLOP/s", flush=True)
    rows, started = [], time.perf_counter()
    for model in args.models.split(","):
        encoder = load_encoder(
            model, device="cuda", dtype="bfloat16", spec_overrides={"tuning": PAPER_TUNING}
        )
        for batch in (int(b) for b in args.batches.split(",")):
            figures = measure_training_step(
                model, batch, "cuda", "bfloat16", steps=args.steps, matmul=matmul, encoder=encoder
            )
            rows.append(figures)
            print(json.dumps(figures.to_dict()), flush=True)
            torch.cuda.empty_cache()
    title = f"Training step, paper recipe (DoRA r16, both towers), bf16, on {name}"
    print(format_table(rows, title))
    print(f"(measured in {time.perf_counter() - started:.0f} s; torch {torch.__version__})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"device": name, "torch": torch.__version__, "rows": [r.to_dict() for r in rows]}, f, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
