"""Performance, measured side by side with a CLIP dual encoder and with this machine's own limits.

    .venv/bin/python benchmarks/run.py            # everything, about 10 minutes on 2 quiet cores
    .venv/bin/python benchmarks/run.py --quick    # a 1-2 minute smoke run (small sizes, no extras)

Writes `benchmarks/results.md` (machine, every figure, the targets) and prints the same table.
Every figure is a ratio or a rate measured in this one run, on this one machine:

1. Throughput: tiles/s and texts/s of real-size SmolVLM-256M (random weights) in float32 and
   bf16, next to a real-size CLIP ViT-B/16 (random weights), on the same synthetic tiles and
   the same token sequences. Efficiency = the model's FLOP/s (FLOPs counted with torch's
   FlopCounterMode on one batch) over the FLOP/s of a plain square matrix product of the same
   dtype, timed just before the model so both see the same machine load.
2. Query latency, text in -> top-10 out (encode + search), p50 / p99, against 1,000,000
   unit-length tiles: exact (faiss IndexFlatIP) and approximate (IVF with a trained coarse
   quantiser, its recall@10 against exact measured), for SmolVLM in float32 / bf16 / int8 and
   for CLIP's text tower likewise (CLIP's index has its own dimension, 512). The queries of
   all models alternate, so machine load falls on all alike.
3. Quality cost of int8 and merging on the synthetic city: text -> image R@1 of a trained
   tiny-smolvlm in float32 and with an int8 LLM, and of a LoRA model unmerged and merged.
4. The figures of the other benchmark scripts (benchmarks/train_step.py, eval_scale.py), run
   as subprocesses in their quick settings when they exist (--skip-others to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import itertools
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from geoloc.encoder.base import Encoder  # noqa: E402
from geoloc.encoder.loading import load_encoder  # noqa: E402
from geoloc.encoder.serving import QueryEncoder, load_for_serving, merge_adapters, to_precision  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# -- the machine and the reference matrix product -------------------------------------------------
def machine() -> dict[str, Any]:
    import faiss
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "faiss": faiss.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg()[0],
    }


def matmul_flops(dtype: torch.dtype, n: int, seconds: float = 2.0) -> float:
    """FLOP/s of an n x n x n matrix product in `dtype` (median of repeats over ~`seconds`)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times))


def count_flops(run: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times) * 1000, q))


# -- inputs -----------------------------------------------------------------------------------------
def synthetic_inputs(count: int, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """Tiles and descriptions drawn by the synthetic city's own generator, in memory."""
    from geoloc.data import synth

    rng = random.Random(seed)
    tiles, texts = [], []
    for _ in range(count):
        scene = synth.random_scene(rng)
        tiles.append(synth.draw_scene(scene, rng).convert("RGB"))
        texts.append(synth.describe(scene, rng))
    return tiles, texts


# -- the two model families behind one small interface ----------------------------------------------
@dataclass
class Tower:
    """One model at one precision: tiles -> vectors, texts -> vectors, prepared inputs for FLOPs."""

    name: str
    dim: int
    embed_tiles: Callable[[list[Image.Image]], np.ndarray]
    embed_texts: Callable[[list[str]], np.ndarray]
    # Inputs prepared now, forward pass later: FLOPs are counted on the forward pass alone.
    tile_forward: Callable[[list[Image.Image]], Callable[[], Any]]
    text_forward: Callable[[list[str]], Callable[[], Any]]


def tower(name: str, encoder: Encoder, batch: int) -> Tower:
    """Either encoder, as geoloc serves it: tiles in batches, queries through QueryEncoder."""
    queries = QueryEncoder(encoder)
    return Tower(
        name=name,
        dim=queries.dim,
        embed_tiles=lambda tiles: encoder.encode_images(tiles, batch_size=batch, show_progress=False),
        embed_texts=queries.encode_batch,
        tile_forward=lambda tiles: partial(encoder, encoder.image_inputs(tiles)),
        text_forward=lambda texts: partial(encoder, encoder.text_inputs(texts)),
    )


# -- 1. throughput and efficiency --------------------------------------------------------------------
def rate(run: Callable[[list[Any]], Any], items: list[Any], batch: int) -> float:
    """Items per second over `items`, after one warm-up batch."""
    run(items[:batch])
    start = time.perf_counter()
    run(items)
    return len(items) / (time.perf_counter() - start)


def throughput(
    towers: dict[str, Tower], tiles: list[Image.Image], texts: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for name, tower in towers.items():
        dtype = torch.bfloat16 if "bf16" in name else torch.float32
        peak = matmul_flops(dtype, 2048 if not args.quick else 1024)  # just before: the same machine load
        is_clip = name.startswith("CLIP")
        tile_batch, text_batch = (16 if is_clip else 4), 32
        timed_tiles = tiles[: args.clip_tiles if is_clip else args.smolvlm_tiles]
        tile_flops = count_flops(tower.tile_forward(timed_tiles[: min(tile_batch, 2)])) / min(tile_batch, 2)
        text_flops = count_flops(tower.text_forward(texts[:text_batch])) / len(texts[:text_batch])
        tiles_per_s = rate(tower.embed_tiles, timed_tiles, tile_batch)
        texts_per_s = rate(tower.embed_texts, texts, text_batch)
        rows.append(
            {
                "model": name,
                "tiles_per_s": tiles_per_s,
                "texts_per_s": texts_per_s,
                "gflop_per_tile": tile_flops / 1e9,
                "gflop_per_text": text_flops / 1e9,
                "matmul_gflops": peak / 1e9,
                "tile_efficiency": tile_flops * tiles_per_s / peak,
                "text_efficiency": text_flops * texts_per_s / peak,
            }
        )
        print(
            f"  {name}: {tiles_per_s:.2f} tiles/s, {texts_per_s:.1f} texts/s, "
            f"tile efficiency {rows[-1]['tile_efficiency']:.0%} of {peak / 1e9:.0f} GFLOP/s"
        )
    return rows


# -- 2. query latency against a million tiles ---------------------------------------------------------
N_CLUSTERS = 1000  # the synthetic gallery is clustered, as real embeddings are: IVF recall means something
SPREAD = 1.2  # noise norm relative to a cluster centre's (a member is ~40 degrees from its centre)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _centres(dim: int, seed: int) -> np.ndarray:
    return _unit(np.random.default_rng([seed, dim]).standard_normal((N_CLUSTERS, dim), dtype=np.float32))


BLOCK = 50_000  # the gallery is drawn in fixed blocks, so any grouping of blocks gives the same vectors


def gallery_blocks(n: int, dim: int, seed: int) -> Iterator[np.ndarray]:
    """The same n unit vectors every time for (n, dim, seed), a block at a time (bounded memory)."""
    centres = _centres(dim, seed)
    rng = np.random.default_rng([seed, dim, 1])
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        noise = _unit(rng.standard_normal((size, dim), dtype=np.float32))
        yield _unit(centres[rng.integers(0, N_CLUSTERS, size)] + SPREAD * noise)


def probe_queries(count: int, dim: int, seed: int) -> np.ndarray:
    """Query vectors from the gallery's own distribution, for recall@10 (not for latency)."""
    rng = np.random.default_rng([seed, dim, 2])
    noise = _unit(rng.standard_normal((count, dim), dtype=np.float32))
    return _unit(_centres(dim, seed)[rng.integers(0, N_CLUSTERS, count)] + SPREAD * noise)


def build_index(kind: str, n: int, dim: int, seed: int, nlist: int, nprobe: int) -> Any:
    """exact: flat inner product, split in one shard per core (faiss scans one query on one thread,
    so shards searched in parallel use every core); ivf: a trained coarse quantiser, nprobe lists."""
    import faiss

    if kind == "exact":
        shards = max(1, torch.get_num_threads())
        index = faiss.IndexShards(dim, True, True)  # threaded, ids numbered shard after shard
        blocks = gallery_blocks(n, dim, seed)
        blocks_per_shard = -(-n // BLOCK // shards) or 1
        for _ in range(shards):
            shard = faiss.IndexFlatIP(dim)
            for block in itertools.islice(blocks, blocks_per_shard):
                shard.add(block)
            index.add_shard(shard)  # faiss's Python wrapper keeps the shard alive
        return index
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    sample = []  # the first blocks of the gallery itself, 64 vectors per list
    for block in gallery_blocks(min(n, 64 * nlist), dim, seed):
        sample.append(block)
    index.train(np.concatenate(sample))
    index.nprobe = nprobe
    for block in gallery_blocks(n, dim, seed):
        index.add(block)
    return index


def query_latency(
    towers: dict[str, Tower], texts: list[str], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """p50 / p99 of text -> top-10 for every tower and both index kinds; IVF recall@10 per dim."""
    dims = sorted({t.dim for t in towers.values()})
    probes = {dim: probe_queries(200, dim, args.seed) for dim in dims}
    truth: dict[int, np.ndarray] = {}
    recall: dict[str, float] = {}
    rows = []
    for kind in ("exact", "ivf"):
        started = time.perf_counter()
        indexes = {
            dim: build_index(kind, args.index_size, dim, args.seed, args.nlist, args.nprobe) for dim in dims
        }
        took = time.perf_counter() - started
        print(f"  built the {kind} indexes ({args.index_size:,} vectors of {dims} dims) in {took:.0f} s")
        for dim, index in indexes.items():
            _, found = index.search(probes[dim], 10)
            if kind == "exact":
                truth[dim] = found
            else:
                recall[f"dim {dim}"] = float(
                    np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth[dim], strict=True)])
                )
        total: dict[str, list[float]] = {name: [] for name in towers}
        encode: dict[str, list[float]] = {name: [] for name in towers}
        count = args.queries if kind == "ivf" else max(10, args.queries // 3)
        for warm in texts[:2]:  # first calls pay one-off set-up
            for tower in towers.values():
                indexes[tower.dim].search(tower.embed_texts([warm]), 10)
        for i in range(count):
            text = texts[i % len(texts)]
            for name, tower in towers.items():  # alternate: machine load falls on all alike
                start = time.perf_counter()
                vector = tower.embed_texts([text])
                encoded = time.perf_counter()
                indexes[tower.dim].search(vector, 10)
                total[name].append(time.perf_counter() - start)
                encode[name].append(encoded - start)
        for name in towers:
            rows.append(
                {
                    "model": name,
                    "index": kind,
                    "p50_ms": percentile_ms(total[name], 50),
                    "p99_ms": percentile_ms(total[name], 99),
                    "encode_p50_ms": percentile_ms(encode[name], 50),
                    "queries": count,
                }
            )
            print(f"  {name} / {kind}: p50 {rows[-1]['p50_ms']:.1f} ms, p99 {rows[-1]['p99_ms']:.1f} ms")
        del indexes
        gc.collect()
    return rows, recall


# -- 3. what int8 and merging cost in retrieval quality ----------------------------------------------
DEMO_RECIPE: dict[str, Any] = {
    "model": {"backbone": "tiny-smolvlm", "pooling": "eos"},
    "loss": {"temperature": 0.05, "direction": "symmetric"},
    "train": {"batch_size": 32, "warmup_ratio": 0.05, "log_every": 20},
}


def _train(manifest: Path, run_dir: Path, overrides: list[str]) -> None:
    from geoloc.config import config_from_dict
    from geoloc.train.trainer import train

    data = copy.deepcopy(DEMO_RECIPE)
    data["data"] = {"train": str(manifest)}
    with contextlib.redirect_stdout(sys.stderr):
        train(config_from_dict(data, overrides), run_dir)


def quality(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from geoloc.data.manifest import read_manifest
    from geoloc.data.synth import generate_city
    from geoloc.eval.evaluate import Embeddings, embed_dataset, score

    manifest = Path(args.city) / "manifest.jsonl" if args.city else None
    run = Path(args.run) if args.run else None
    if manifest is None or run is None or not manifest.is_file():
        manifest = generate_city(workdir / "city", tiles=args.city_tiles, seed=args.seed)
        run = workdir / "full"
        print(f"  training tiny-smolvlm (demo recipe, at most {args.train_minutes:g} min) ...")
        _train(
            manifest,
            run,
            [
                "tuning.strategy=full",
                "train.lr=1e-3",
                "train.epochs=8",
                "train.eval_every=200",
                f"train.max_minutes={args.train_minutes}",
                f"train.seed={args.seed}",
            ],
        )
    test = read_manifest(manifest, split="test")
    texts, _ = test.texts_with_image_index()

    def r1(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
        embeddings = Embeddings(image_emb, text_emb, [], [], [])
        return float(score(embeddings, test)["text_to_image"]["R@1"])

    reference = embed_dataset(load_for_serving(run), test, batch_size=64)
    int8 = load_for_serving(run, precision="int8")
    int8_texts = int8.encode_text(texts, batch_size=64)
    bf16 = load_for_serving(run, precision="bfloat16")
    out: dict[str, Any] = {
        "model": str(run),
        "test_tiles": len(test.records),
        "test_texts": len(texts),
        "float32": r1(reference.image_emb, reference.text_emb),
        "int8_queries": r1(reference.image_emb, int8_texts),
        "int8_both": r1(int8.encode_images([r.image for r in test.records], batch_size=64), int8_texts),
        "bf16_both": r1(
            embed_dataset(bf16, test, batch_size=64).image_emb, bf16.encode_text(texts, batch_size=64)
        ),
    }
    # A LoRA model, to show that merging changes nothing: a short run on the same city.
    lora_run = workdir / "lora"
    print(f"  training a LoRA tiny-smolvlm for {args.lora_steps} steps ...")
    _train(
        manifest,
        lora_run,
        [
            "tuning.strategy=lora",
            "tuning.rank=16",
            "train.lr=2e-3",
            f"train.max_steps={args.lora_steps}",
            f"train.eval_every={args.lora_steps}",
            f"train.save_every={args.lora_steps}",
            f"train.seed={args.seed}",
        ],
    )
    unmerged = embed_dataset(load_encoder(lora_run), test, batch_size=64)
    merged_encoder = merge_adapters(load_encoder(lora_run))
    merged = embed_dataset(merged_encoder, test, batch_size=64)
    out |= {
        "lora_unmerged": r1(unmerged.image_emb, unmerged.text_emb),
        "lora_merged": r1(merged.image_emb, merged.text_emb),
        "lora_merged_max_abs_diff": float(
            max(
                np.abs(unmerged.text_emb - merged.text_emb).max(),
                np.abs(unmerged.image_emb - merged.image_emb).max(),
            )
        ),
    }
    return out


# -- 4. the other benchmark scripts --------------------------------------------------------------------
OTHER_SCRIPTS = {"train_step.py": ["--steps", "1", "--text-words", "64"], "eval_scale.py": ["--scale", "0.1"]}


def other_benchmarks(timeout: float) -> dict[str, str]:
    """The last printed lines of each other benchmark script that exists, run in its quick setting."""
    results = {}
    for script, quick_args in OTHER_SCRIPTS.items():
        path = ROOT / "benchmarks" / script
        if not path.is_file():
            results[script] = "(not present in this tree)"
            continue
        argv = quick_args  # each script's own quick setting, named here once
        command = [sys.executable, str(path), *argv]
        print(f"  running {' '.join(command[1:])} ...")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
            lines = done.stdout.strip().splitlines()[-15:]
            status = (
                ""
                if done.returncode == 0
                else f" (exit status {done.returncode}: {done.stderr.strip()[-300:]})"
            )
            results[script] = f"$ python benchmarks/{script} {' '.join(argv)}{status}\n" + "\n".join(lines)
        except subprocess.TimeoutExpired:
            results[script] = (
                f"(python benchmarks/{script} {' '.join(argv)} did not finish in {timeout:.0f} s)"
            )
    return results


# -- the report ----------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[list[str]]:
    """The issue's three targets, each with the measured figure and whether it is met."""
    rows = []
    latency = results.get("latency", [])
    for kind in ("exact", "ivf"):
        p50 = {r["model"]: r["p50_ms"] for r in latency if r["index"] == kind}
        if not p50:
            continue
        smol = min((v, k) for k, v in p50.items() if k.startswith("SmolVLM"))
        clip_best = min((v, k) for k, v in p50.items() if k.startswith("CLIP"))
        for clip in (clip_best, (p50["CLIP float32"], "CLIP float32")):
            ratio = smol[0] / clip[0]
            rows.append(
                [
                    f"query p50, {kind} index: {smol[1]} / {clip[1]}",
                    "<= 1.5x",
                    f"{ratio:.2f}x",
                    "met" if ratio <= 1.5 else f"missed by {ratio / 1.5:.2f}x",
                ]
            )
    for row in results.get("throughput", []):
        if row["model"].startswith("SmolVLM"):
            eff = row["tile_efficiency"]
            rows.append(
                [
                    f"tile embedding, {row['model']}: share of {row['matmul_gflops']:.0f} GFLOP/s matmul",
                    ">= 70%",
                    f"{eff:.0%}",
                    "met" if eff >= 0.7 else f"missed by {70 - 100 * eff:.0f} points",
                ]
            )
    quality_figures = results.get("quality")
    if quality_figures:
        drop = quality_figures["float32"] - quality_figures["int8_queries"]
        rows.append(
            [
                "int8 queries: R@1 drop on the synthetic city",
                "<= 1 point",
                f"{drop:.2f} points",
                "met" if drop <= 1 else f"missed by {drop - 1:.2f} points",
            ]
        )
    return rows


def report(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    load = f"{m['load_average_start']:.1f} at the start, {m['load_average_end']:.1f} at the end"
    parts = [
        "# Performance results",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} in {results['seconds']:.0f} s.",
        "## Machine",
        _table(["", ""], [[k.replace("_", " "), v] for k, v in m.items() if not k.startswith("load")]),
        f"1-minute load average: {load}. Above {m['cores']}, other processes shared the cores during "
        "the run: rates are then lower than on a quiet machine, ratios taken in the same run less so.",
    ]
    if "throughput" in results:
        header = ["model", "tiles/s", "texts/s", "GFLOP/tile", "GFLOP/text", "matmul GFLOP/s"]
        rows = [
            [r["model"], f"{r['tiles_per_s']:.2f}", f"{r['texts_per_s']:.1f}", f"{r['gflop_per_tile']:.1f}"]
            + [f"{r['gflop_per_text']:.2f}", f"{r['matmul_gflops']:.0f}"]
            + [f"{r['tile_efficiency']:.0%}", f"{r['text_efficiency']:.0%}"]
            for r in results["throughput"]
        ]
        parts += [
            "## Throughput and efficiency (random weights, real sizes)",
            _table([*header, "tile efficiency", "text efficiency"], rows),
            f"Inputs: {results['inputs']}. Efficiency = the model's FLOP/s (torch FlopCounterMode: "
            "matrix products, convolutions, attention) over the FLOP/s of a square matrix product "
            "of the same dtype, timed just before the model.",
        ]
    if "latency" in results:
        rows = [
            [r["model"], r["index"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]
            + [f"{r['encode_p50_ms']:.1f}", r["queries"]]
            for r in results["latency"]
        ]
        recall = ", ".join(f"{k} {v:.3f}" for k, v in results["recall"].items())
        parts += [
            f"## Query latency: text in, top-10 out, {results['index_size']:,} tiles",
            _table(["model", "index", "p50 ms", "p99 ms", "encoding alone, p50 ms", "queries"], rows),
            "exact = faiss IndexFlatIP in one shard per core, searched in parallel; ivf = "
            f"IndexIVFFlat, {results['nlist']} lists, nprobe {results['nprobe']}; its recall@10 "
            f"against exact: {recall}. The gallery: unit vectors around {N_CLUSTERS} random centres "
            "(clustered, as real embeddings are; on structureless random vectors IVF recall is far "
            "lower). Query vectors come from each model's own text encoder.",
        ]
    if "quality" in results:
        q = results["quality"]
        names = {
            "float32": "trained tiny-smolvlm, float32",
            "int8_queries": "int8 LLM for the queries, float32 tiles",
            "int8_both": "int8 LLM on both sides",
            "bf16_both": "bf16 on both sides",
            "lora_unmerged": "LoRA run, adapters unmerged",
            "lora_merged": "LoRA run, adapters merged",
        }
        parts += [
            "## Retrieval quality of int8, bf16 and merged adapters (synthetic city, text -> image R@1)",
            _table(["model", "R@1"], [[label, f"{q[key]:.2f}"] for key, label in names.items()]),
            f"{q['test_tiles']} test tiles, {q['test_texts']} descriptions; model `{q['model']}`. "
            f"Merged vs unmerged embeddings: max |difference| {q['lora_merged_max_abs_diff']:.1e}.",
        ]
    if "errors" in results:
        parts += ["## Parts that failed", "\n".join(f"- {k}: {v}" for k, v in results["errors"].items())]
    if "targets" in results:
        parts += ["## Targets", _table(["target", "goal", "measured", "verdict"], results["targets"])]
    if "others" in results:
        parts.append("## Other benchmark scripts")
        parts += [f"### {name}\n```\n{text}\n```" for name, text in results["others"].items()]
    return "\n\n".join(parts) + "\n"


# -- main ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run: small sizes, no extras")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.md"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--index-size", type=int, default=1_000_000)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument(
        "--queries", type=int, default=100, help="queries per model (a third on the exact index)"
    )
    parser.add_argument("--smolvlm-tiles", type=int, default=8, help="tiles timed per SmolVLM precision")
    parser.add_argument("--clip-tiles", type=int, default=32)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument(
        "--run", help="a trained tiny-smolvlm run to score (default: demo_out/run if present)"
    )
    parser.add_argument("--city", help="its synthetic city folder (default: demo_out/city)")
    parser.add_argument("--city-tiles", type=int, default=1200)
    parser.add_argument("--train-minutes", type=float, default=2.0)
    parser.add_argument("--lora-steps", type=int, default=60)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["throughput", "latency", "quality", "others"]
    )
    parser.add_argument("--skip-others", action="store_true", help="same as --skip others")
    parser.add_argument("--others-timeout", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.run is None and args.city is None and (ROOT / "demo_out" / "run").is_dir():
        args.run, args.city = str(ROOT / "demo_out" / "run"), str(ROOT / "demo_out" / "city")
    if args.quick:
        args.index_size, args.nlist, args.nprobe, args.queries = 100_000, 256, 8, 20
        args.smolvlm_tiles, args.clip_tiles, args.texts = 2, 4, 8
        args.run = args.city = None
        args.city_tiles, args.train_minutes, args.lora_steps = 60, 0.1, 4
        args.skip_others = True
    if args.skip_others:
        args.skip.append("others")
    return args


def main(argv: list[str] | None = None) -> int:
    from geoloc import atomic

    args = parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "machine": machine(),
        "index_size": args.index_size,
        "nlist": args.nlist,
        "nprobe": args.nprobe,
    }
    print(f"machine: {results['machine']}")

    tiles, texts = synthetic_inputs(max(args.clip_tiles, args.smolvlm_tiles, args.texts), args.seed)
    tiles = [t.resize((512, 512), Image.BICUBIC) for t in tiles]  # SmolVLM's input size; CLIP resizes to 224

    def section(name: str, title: str, run: Callable[[], None]) -> None:
        """Run one part; a failure is reported in results.md instead of losing the other parts."""
        if name in args.skip:
            return
        print(title)
        try:
            run()
        except Exception as error:  # noqa: BLE001 - any failure of one part must not end the run
            traceback.print_exc()
            results.setdefault("errors", {})[name] = f"{type(error).__name__}: {error}"

    # First, while this process is small: a child's peak RSS (ru_maxrss) starts from its parent's.
    section(
        "others",
        "0/4 the other benchmark scripts ...",
        lambda: results.update(others=other_benchmarks(args.others_timeout)),
    )
    print("loading real-size SmolVLM-256M and CLIP ViT-B/16 with random weights ...")
    smol = load_for_serving("random-smolvlm-256m")
    clip = load_for_serving("random-clip-b16")  # CLIP ViT-B/16's shapes, SmolLM2's tokenizer
    lengths = [len(x) for x in smol.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    results["inputs"] = (
        f"{args.smolvlm_tiles} synthetic-city tiles per SmolVLM precision (512 px, batch 4), "
        f"{args.clip_tiles} for CLIP (224 px, batch 16), {len(texts)} descriptions of "
        f"{np.mean(lengths):.0f} tokens on average (batch 32), the same token ids for both"
    )
    smol_bf16 = to_precision(copy.deepcopy(smol), "bfloat16")
    clip_bf16 = to_precision(copy.deepcopy(clip), "bfloat16")
    towers_models = {"smol": smol, "clip": clip}
    towers = {
        "SmolVLM-256M float32": tower("SmolVLM-256M float32", smol, 4),
        "SmolVLM-256M bf16": tower("SmolVLM-256M bf16", smol_bf16, 4),
        "CLIP float32": tower("CLIP float32", clip, 16),
        "CLIP bf16": tower("CLIP bf16", clip_bf16, 16),
    }

    def latency() -> None:
        smol_int8 = to_precision(copy.deepcopy(towers_models["smol"]), "int8")
        clip_int8 = to_precision(copy.deepcopy(towers_models["clip"]), "int8")
        towers["SmolVLM-256M int8"] = tower("SmolVLM-256M int8", smol_int8, 4)
        towers["CLIP int8"] = tower("CLIP int8", clip_int8, 16)
        results["latency"], results["recall"] = query_latency(towers, texts, args)

    def quality_section() -> None:
        with tempfile.TemporaryDirectory(prefix="geoloc-bench-") as workdir:
            results["quality"] = quality(args, Path(workdir))

    section(
        "throughput",
        "1/4 throughput and efficiency ...",
        lambda: results.update(throughput=throughput(towers, tiles, texts, args)),
    )
    section("latency", "2/4 query latency ...", latency)
    towers.clear()  # free the models before the next parts
    towers_models.clear()
    del smol, smol_bf16, clip, clip_bf16
    gc.collect()
    section("quality", "3/4 retrieval quality of int8 / bf16 / merged ...", quality_section)
    results["targets"] = targets(results)
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - started
    command = (
        "python benchmarks/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    text = report(results, command)
    atomic.write_text(Path(args.out), text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
