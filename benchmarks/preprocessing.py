"""How far geoloc's one-resize preprocessing is from the backbones' image processors as released.

    python benchmarks/preprocessing.py [--tiles 12] [--demo-minutes 1.5]

For each family, on 512-px JPEG tiles (the synthetic city's scenes, as GeoText-1652's 512-px
satellite tiles come):
  - pixels: mean and largest absolute difference, in normalised units, between
    `model.preprocessing: one-resize` and `released` (the image processor as the released code
    calls it: for SmolVLM up to its shipped 2048 px and back down to 512);
  - embeddings: the cosine between the two tiles' vectors, with the real-size presets (real
    shapes and processors, seeded random weights);
  - retrieval: text->image R@1 on the demo's held-out tiles, a tiny SmolVLM trained with the
    demo's recipe and scored with either preprocessing.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from geoloc.data.manifest import read_manifest
from geoloc.data.synth import generate_city
from geoloc.demo.run import demo_config
from geoloc.encoder.loading import load_encoder
from geoloc.eval.evaluate import evaluate
from geoloc.train.trainer import train

# (family, real-size preset)
FAMILIES = [
    ("smolvlm", "random-smolvlm-256m"),
    ("internvl", "random-internvl3_5-1b"),
    ("clip", "random-clip-b16"),
]


def jpeg_tiles(folder: Path, count: int) -> list[Path]:
    manifest = generate_city(folder / "city", tiles=max(count, 20), seed=3)
    records = read_manifest(manifest).records[:count]
    tiles = []
    for record in records:
        path = folder / f"tile{len(tiles):04d}.jpg"
        Image.open(record.image).convert("RGB").resize((512, 512), Image.Resampling.BICUBIC).save(
            path, quality=90
        )
        tiles.append(path)
    return tiles


def compare_family(preset: str, tiles: list[Path]) -> dict[str, float]:
    encoder = load_encoder(preset)
    released = encoder.rebuilt(spec=dataclasses.replace(encoder.spec, preprocessing="released"))
    fast, slow = encoder.tile_processor, released.tile_processor
    images = [Image.open(t).convert("RGB") for t in tiles]
    diffs = []
    fast_s = slow_s = 0.0
    for image in images:
        start = time.perf_counter()
        a = fast.tensor(image)
        fast_s += time.perf_counter() - start
        start = time.perf_counter()
        b = slow.tensor(image)
        slow_s += time.perf_counter() - start
        diffs.append((a - b).abs())
    diff = torch.stack(diffs)
    figures = {
        "pixel_mean_abs": float(diff.mean()),
        "pixel_max_abs": float(diff.max()),
        "ms_per_tile_one_resize": 1000 * fast_s / len(images),
        "ms_per_tile_released": 1000 * slow_s / len(images),
    }
    if float(diff.max()) == 0.0:
        figures["embedding_cosine_min"] = 1.0  # the same pixels give the same vectors
        return figures
    vectors = encoder.encode_images(tiles, batch_size=4, num_workers=0)
    released_vectors = released.encode_images(tiles, batch_size=4, num_workers=0)
    cosines = (vectors * released_vectors).sum(axis=1)
    figures["embedding_cosine_min"] = float(cosines.min())
    figures["embedding_cosine_mean"] = float(cosines.mean())
    return figures


def demo_recall(folder: Path, minutes: float) -> dict[str, float]:
    manifest = generate_city(folder / "demo-city", tiles=1200, seed=0)
    run = folder / "demo-run"
    train(demo_config(manifest, minutes, seed=0), run)
    test = read_manifest(manifest, split="test")
    encoder = load_encoder(run)
    released = encoder.rebuilt(spec=dataclasses.replace(encoder.spec, preprocessing="released"))
    fast_metrics, _ = evaluate(encoder, test, show_progress=False)
    slow_metrics, _ = evaluate(released, test, show_progress=False)
    return {
        "R@1_one_resize": fast_metrics["text_to_image"]["R@1"],
        "R@1_released": slow_metrics["text_to_image"]["R@1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, default=12)
    parser.add_argument("--demo-minutes", type=float, default=1.5, help="0 skips the demo's R@1")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiles = jpeg_tiles(folder, args.tiles)
        print(f"{args.tiles} 512-px JPEG tiles; one-resize against released:")
        for family, preset in FAMILIES:
            figures = compare_family(preset, tiles)
            print(f"  {family:9s} ({preset}): " + ", ".join(f"{k} {v:.6g}" for k, v in figures.items()))
        if args.demo_minutes > 0:
            recall = demo_recall(folder, args.demo_minutes)
            print(
                f"  demo (tiny-smolvlm, {args.demo_minutes} min): "
                + ", ".join(f"{k} {v:.1f}" for k, v in recall.items())
            )


if __name__ == "__main__":
    main()
