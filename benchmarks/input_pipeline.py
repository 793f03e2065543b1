"""How fast tiles are decoded and preprocessed, and whether an accelerator would wait for them.

    python benchmarks/input_pipeline.py [--tiles 96] [--steps 12]

1. Tiles/s on one core to decode a JPEG tile and make its pixel tensor: SmolVLM's 512 px and
   InternVL's 448 px, with `model.preprocessing: released` (the image processor as the released
   code calls it: what geoloc did before the one-resize path) and `one-resize` (the default).
2. The training pipeline (PairDataset -> PairCollator: tokens and pixels) through a DataLoader
   with 0, 1 and 2 workers: tiles/s.
3. A simulated accelerator: a consumer that takes a batch, then holds it for the time one step
   takes on an H200 (measured: 14.3 pairs/s at batch 10, 74 pairs/s at batch 64; docs/scale.md),
   as `geoloc train` would. Printed: the share of its time it waits for data, after the first
   batch (which waits for the workers to start; printed apart).

Figures are ratios measured in one run; the machine's other load moves them all alike.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from geoloc.data.images import load_image
from geoloc.data.manifest import read_manifest
from geoloc.data.pipeline import PairCollator, PairDataset, available_cores, make_loader
from geoloc.data.synth import generate_city
from geoloc.encoder.families import MllmFamily, family_named
from geoloc.encoder.inputs import TextInputs, TileProcessor
from geoloc.encoder.presets import preset_processing
from geoloc.train.batching import EpochBatchSampler, epoch_batches

PRESETS = {512: ("random-smolvlm-256m", "smolvlm"), 448: ("random-internvl3_5-1b", "internvl")}
H200_PAIRS_PER_S = {10: 14.3, 64: 74.0}  # the bare training step, docs/scale.md


def jpeg_tiles(folder: Path, count: int, size: int) -> tuple[list[Path], list[str]]:
    manifest = generate_city(folder / f"city{size}", tiles=count, seed=5)
    data = read_manifest(manifest)
    tiles = []
    for n, record in enumerate(data.records):
        path = folder / f"{size}-{n:05d}.jpg"
        Image.open(record.image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
            path, quality=90
        )
        tiles.append(path)
    texts, _ = data.texts_with_image_index()
    return tiles, texts


def processors(size: int) -> tuple[TextInputs, dict[str, TileProcessor]]:
    preset, family_name = PRESETS[size]
    tokenizer, image_processor = preset_processing(preset)
    family = family_named(family_name, MllmFamily)
    text = TextInputs(tokenizer, [], [], limit=300)
    made = {
        name: TileProcessor.for_processor(
            image_processor,
            size,
            name,
            image_axis=family.pixels_have_image_axis,
            nudge_all_zero=family.drops_all_zero_images,
            released_kwargs=family.image_processor_kwargs,
        )
        for name in ("released", "one-resize")
    }
    return text, made


def one_core_rate(processor: TileProcessor, tiles: list[Path], budget_s: float = 8.0) -> float:
    done, start = 0, time.perf_counter()
    for tile in tiles:
        processor.tensor(load_image(tile))
        done += 1
        if time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


def pipeline(
    tiles: list[Path], texts: list[str], text: TextInputs, processor: TileProcessor, batch: int, workers: int
) -> tuple[torch.utils.data.DataLoader, EpochBatchSampler]:
    """One epoch of 20 batches: enough for the simulated steps (tiles are reused)."""
    texts = [texts[i % len(texts)] for i in range(20 * batch)]
    tile_of_text = [i % len(tiles) for i in range(len(texts))]
    pairs = PairDataset(texts, tile_of_text, tiles, [t.name for t in tiles], processor)
    sampler = EpochBatchSampler()
    sampler.use(epoch_batches([str(i) for i in tile_of_text], batch, seed=0, epoch=0))
    loader = make_loader(
        pairs, PairCollator(text, processor), workers, torch.device("cpu"), batch_sampler=sampler
    )
    return loader, sampler


def loader_rate(loader: torch.utils.data.DataLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # workers started, first batch out of the way
    start, pairs = time.perf_counter(), 0
    for _ in range(batches):
        pairs += next(iterator).text["input_ids"].shape[0]
    return pairs / (time.perf_counter() - start)


def simulated_wait(loader: torch.utils.data.DataLoader, step_s: float, steps: int) -> tuple[float, float]:
    """(share of the time waited after the first batch, the first batch's wait in seconds)."""
    iterator = iter(loader)
    start = time.perf_counter()
    next(iterator)
    first = time.perf_counter() - start
    waited = computed = 0.0
    for _ in range(steps):
        time.sleep(step_s)  # the accelerator's step
        computed += step_s
        start = time.perf_counter()
        next(iterator)
        waited += time.perf_counter() - start
    return waited / (waited + computed), first


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, default=96)
    parser.add_argument(
        "--steps", type=int, default=12, help="simulated accelerator steps per setting (< 20)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"cores available: {available_cores()}")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {size: jpeg_tiles(Path(tmp), args.tiles, size) for size in (512, 448)}
        print("1. decode + preprocess on one core (tiles/s):")
        for size, (tiles, _) in sets.items():
            _, made = processors(size)
            rates = {name: one_core_rate(p, tiles) for name, p in made.items()}
            print(
                f"   {size} px ({PRESETS[size][1]}): released {rates['released']:.1f}, "
                f"one-resize {rates['one-resize']:.1f} ({rates['one-resize'] / rates['released']:.1f}x)"
            )
        tiles, texts = sets[512]
        text, made = processors(512)
        fast = made["one-resize"]
        print("2. SmolVLM 512-px training pipeline, batch 64 (pairs/s):")
        for workers in (0, 1, 2):
            loader, _ = pipeline(tiles, texts, text, fast, 64, workers)
            print(f"   {workers} workers: {loader_rate(loader, 4):.1f}")
        print("3. a simulated H200 taking batches at its measured step rate:")
        for batch, rate in H200_PAIRS_PER_S.items():
            for name, processor in made.items():
                loader, _ = pipeline(tiles, texts, text, processor, batch, 2)
                share, first = simulated_wait(loader, batch / rate, args.steps)
                print(
                    f"   batch {batch} ({rate} pairs/s), {name}, 2 workers: waits {share:.1%} of its time "
                    f"(first batch {first:.2f} s)"
                )


if __name__ == "__main__":
    main()
