"""How fast a training step runs: pairs/s, peak memory and model FLOP utilisation.

A helper of the benchmark scripts beside it (gpu_train.py, train_step.py, eval_scale.py), which
import it as `throughput`; it is not part of the geoloc package.

The step measured is the trainer's own (`ContrastiveStep` on a `PairEncoder`, AdamW), on synthetic
inputs of a fixed shape: texts of `text_words` words and random-noise tiles at the backbone's
image size. FLOPs are counted once with torch's FlopCounterMode (every matrix product and
attention of the forward and backward passes), so utilisation = counted FLOPs / step time over
the FLOP/s of a plain matrix product measured in the same process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from geoloc.encoder.loading import load_encoder
from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.presets import CORPUS
from geoloc.encoder.tuning import TuningConfig
from geoloc.train.loss import InfoNCE
from geoloc.train.step import ContrastiveStep, PairEncoder

PAPER_TUNING = TuningConfig(
    strategy="dora", rank=16, alpha=128.0, dropout=0.1, init="gaussian", targets="paper"
)


@dataclass
class StepFigures:
    model: str
    batch: int
    chunk: int  # gradient-caching chunk (0 = plain step)
    tile_features: str  # "compute" or "cache"
    pairs_per_s: float
    step_s: float
    peak_memory_gib: float
    flops_per_step: float
    achieved_tflops: float
    matmul_tflops: float
    utilisation: float  # achieved / matmul

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_bytes() -> int:
    """This process's peak resident memory.

    Linux's VmHWM starts afresh at exec; ru_maxrss does not (a child started by a large parent
    reports the parent's peak), so VmHWM is read where it exists.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 10) -> float:
    """FLOP/s (in TFLOP/s) of a plain square matrix product on this device and dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronise(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronise(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def synthetic_batch(encoder: MllmEncoder, batch: int, text_words: int, seed: int = 0) -> tuple[dict, dict]:
    """(text inputs, image inputs) of `batch` pairs: corpus words and random-noise tiles."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(CORPUS, size=text_words)) for _ in range(batch)]
    size = encoder.image_size
    tiles = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(batch)]
    return encoder.text_inputs(texts), encoder.image_inputs(tiles)


def _autocast(device: torch.device, bf16: bool) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def measure_training_step(
    model: str,
    batch: int,
    device: str = "cpu",
    dtype: str = "float32",
    tuning: TuningConfig = PAPER_TUNING,
    chunk: int = 0,
    text_words: int = 96,
    warmup: int = 2,
    steps: int = 5,
    matmul: float | None = None,
    tile_features: str = "compute",
    encoder: MllmEncoder | None = None,
) -> StepFigures:
    """Time the trainer's step on `model` (a preset, e.g. random-smolvlm-256m) at one batch size.

    `encoder`: that model already loaded with `tuning` (saves loading it again per batch size).
    """
    torch_device = torch.device(device)
    if encoder is None:
        encoder = load_encoder(model, device=device, dtype=dtype, spec_overrides={"tuning": tuning})
    encoder.train()
    bf16 = dtype in ("bfloat16", "bf16") or torch_device.type == "cuda"
    loss_fn = InfoNCE(0.03).to(torch_device)
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    step = ContrastiveStep(
        PairEncoder(encoder), loss_fn, _autocast(torch_device, bf16), torch_device, chunk=chunk
    )
    text_inputs, image_inputs = synthetic_batch(encoder, batch, text_words)
    if tile_features == "cache":
        from geoloc.encoder.tile_features import features_of

        # What the cache hands the step: features computed once, outside the timed loop.
        with torch.no_grad(), _autocast(torch_device, bf16)():
            features = features_of(encoder, image_inputs)
        image_inputs = {k: v for k, v in image_inputs.items() if not k.startswith("pixel")}
        image_inputs["image_features"] = features

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        step(text_inputs, image_inputs)
        optimizer.step()

    for _ in range(warmup):
        one_step()
    from torch.utils.flop_counter import FlopCounterMode

    # Counted with eager attention (plain matrix products, the same FLOPs): some torch releases'
    # counters reject the grouped-query shapes of fused attention.
    # Eager attention holds every attention matrix at once, so FLOPs are counted on at most 8
    # pairs and scaled: every term but the (negligible) batch x batch loss is linear in the batch.
    base = encoder.base_model
    base.set_attn_implementation("eager")
    rows = min(batch, 8)
    counter = FlopCounterMode(display=False)
    with counter:
        optimizer.zero_grad(set_to_none=True)
        step({k: v[:rows] for k, v in text_inputs.items()}, {k: v[:rows] for k, v in image_inputs.items()})
    base.set_attn_implementation("sdpa")
    optimizer.zero_grad(set_to_none=True)
    flops = float(counter.get_total_flops()) * batch / rows
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    synchronise(torch_device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    synchronise(torch_device)
    step_s = (time.perf_counter() - start) / steps
    if torch_device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(torch_device) / 2**30
    else:
        peak = peak_rss_bytes() / 2**30
    if matmul is None:
        matmul = matmul_tflops(torch_device, torch.bfloat16 if bf16 else torch.float32)
    achieved = flops / step_s / 1e12
    return StepFigures(
        model=model,
        batch=batch,
        chunk=chunk,
        tile_features=tile_features,
        pairs_per_s=batch / step_s,
        step_s=step_s,
        peak_memory_gib=peak,
        flops_per_step=flops,
        achieved_tflops=achieved,
        matmul_tflops=matmul,
        utilisation=achieved / matmul,
    )


def format_table(rows: list[StepFigures], title: str) -> str:
    """A Markdown table of step figures."""
    lines = [
        f"### {title}",
        "",
        "| model | batch | grad-cache chunk | tile features | pairs/s | step (s) | peak memory (GiB) "
        "| TFLOP/step | achieved TFLOP/s | matmul TFLOP/s | utilisation |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.batch} | {r.chunk or '-'} | {r.tile_features} | {r.pairs_per_s:.1f} "
            f"| {r.step_s:.3f} | {r.peak_memory_gib:.2f} | {r.flops_per_step / 1e12:.2f} "
            f"| {r.achieved_tflops:.1f} | {r.matmul_tflops:.1f} | {100 * r.utilisation:.1f} % |"
        )
    return "\n".join(lines)
