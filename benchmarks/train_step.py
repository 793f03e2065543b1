"""Training-step speed and memory on this CPU: cached tile features and gradient caching.

    python benchmarks/train_step.py [--model random-smolvlm-256m] [--batch 4] [--steps 2]

Real-size SmolVLM-256M (random weights), LoRA on the LLM's attention (so the vision side is frozen
and its features can be cached), float32. Each set-up runs in its own process, so its peak
memory (max RSS) is its own:
  - tile features computed every step (the vision tower runs on every tile, every step);
  - tile features cached (what the trainer reads from disk; the vision tower never runs);
  - gradient caching with cached features at a 4x larger effective batch, in chunks of --batch;
  - the paper's recipe (DoRA on both towers: nothing to cache) for reference.
Target: cached tile features >= 5x faster steps than computing them.

Caching removes the vision tower's forward pass and leaves the language model's forward and
backward passes over both the tile's tokens and the text's, so the speed-up depends on the text
length: the computed and cached steps run at each --text-words (default 16, 64 and 110 words:
a short search query, a GeoText-1652 caption, a CVG-Text description of about 126 tokens), and
the FLOP ratio of the two steps, counted, is the bound on the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

LLM_ONLY = {
    "strategy": "lora",
    "rank": 16,
    "alpha": 32.0,
    "dropout": 0.0,
    "init": "gaussian",
    "targets": "llm-attn",
}


def _one(spec: dict) -> None:
    import torch
    from throughput import PAPER_TUNING, measure_training_step

    from geoloc.encoder.tuning import TuningConfig

    tuning = PAPER_TUNING if spec["tuning"] == "paper" else TuningConfig(**LLM_ONLY)
    figures = measure_training_step(
        spec["model"],
        spec["batch"],
        tuning=tuning,
        chunk=spec["chunk"],
        steps=spec["steps"],
        warmup=1,
        text_words=spec["text_words"],
        tile_features=spec["features"],
    )
    print(json.dumps({**figures.to_dict(), "tuning": spec["tuning"], "threads": torch.get_num_threads()}))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="random-smolvlm-256m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--text-words", type=int, nargs="+", default=[16, 64, 110])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(json.loads(args.one))
        return 0
    base = {"model": args.model, "steps": args.steps}
    main_words = 64 if 64 in args.text_words else args.text_words[0]
    setups = []
    for words in args.text_words:
        plain = {"batch": args.batch, "chunk": 0, "tuning": "llm-attn", "text_words": words}
        setups += [{"features": "compute", **plain}, {"features": "cache", **plain}]
    setups += [
        {"features": "cache", "batch": 4 * args.batch, "chunk": args.batch, "tuning": "llm-attn"},
        {"features": "compute", "batch": args.batch, "chunk": 0, "tuning": "paper"},
    ]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for setup in setups:
        spec = {"text_words": main_words, **base, **setup}
        done = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(spec)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "text_words": spec["text_words"]})
        print(json.dumps(rows[-1]), flush=True)
    cpu = platform.processor() or platform.machine()
    print()
    print(f"Training step of {args.model} (random weights, float32) on {cpu}, {os.cpu_count()} cores,")
    print(f"{rows[0]['threads']} torch threads")
    print()
    header = ["tuning", "tile features", "text words", "batch", "grad-cache chunk", "pairs/s", "step (s)"]
    print("| " + " | ".join([*header, "peak RSS (GiB)", "GFLOP/step"]) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["tuning"], r["tile_features"], r["text_words"], r["batch"], r["chunk"] or "-"]
        cells += [f"{r['pairs_per_s']:.2f}", f"{r['step_s']:.2f}", f"{r['peak_memory_gib']:.2f}"]
        cells += [f"{r['flops_per_step'] / 1e9:.0f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print()
    print("| text words | cached / computed pairs/s | FLOP ratio (the bound) | target >= 5x |")
    print("|---:|---:|---:|---|")
    for n, words in enumerate(args.text_words):
        computed, cached = rows[2 * n], rows[2 * n + 1]
        speedup = cached["pairs_per_s"] / computed["pairs_per_s"]
        bound = computed["flops_per_step"] / cached["flops_per_step"]
        print(f"| {words} | {speedup:.2f}x | {bound:.2f}x | {'met' if speedup >= 5 else 'missed'} |")
    big, small = rows[-2], rows[2 * args.text_words.index(main_words) + 1]
    print()
    print(
        f"gradient caching, 4x the batch in chunks of {args.batch} ({main_words}-word texts): "
        f"{big['pairs_per_s']:.2f} pairs/s, peak RSS {big['peak_memory_gib']:.2f} GiB "
        f"(batch {args.batch}: {small['peak_memory_gib']:.2f} GiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
