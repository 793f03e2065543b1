"""Training and gallery embedding end to end, from image files on disk, as a user runs them.

    python benchmarks/end_to_end.py [--model random-smolvlm-256m] [--device cuda] [--steps 30]

1. `geoloc train`'s own loop (geoloc.train.train) on a manifest of 512-px JPEG tiles: the paper's
   DoRA recipe at batch 10 and 64 (bf16 on a GPU). Printed: pairs/s after the first logged
   steps, and the share of step time spent waiting for batches (`data_wait_s` against `step_s`
   in metrics.jsonl).
2. `geoloc embed`'s own function (geoloc.eval.gallery.embed_gallery) on the same tiles: tiles/s
   with the default one-resize preprocessing and workers, and with `preprocessing: released` and
   no workers (what geoloc did before both).

benchmarks/gpu.sh runs it after the bare-step table, so its pairs/s sit beside the bare step's.
On a CPU it runs too (slowly): `--model tiny-smolvlm --device cpu` checks the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

from PIL import Image

from geoloc.config import config_from_dict
from geoloc.data.manifest import read_manifest
from geoloc.data.synth import generate_city
from geoloc.encoder.loading import load_encoder
from geoloc.eval.gallery import embed_gallery
from geoloc.train.trainer import train


def jpeg_city(folder: Path, tiles: int, size: int) -> Path:
    """The synthetic city with its tiles as `size`-px JPEG files, and a manifest naming them."""
    manifest = generate_city(folder / "city", tiles=tiles, seed=4)
    rows = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        source = manifest.parent / row["image"]
        target = source.with_suffix(".jpg")
        Image.open(source).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
            target, quality=90
        )
        row["image"] = str(target.relative_to(manifest.parent))
        rows.append(json.dumps(row))
    out = folder / "city" / "manifest-jpeg.jsonl"
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def train_figures(
    manifest: Path, out: Path, model: str, device: str, batch: int, steps: int
) -> dict[str, float]:
    config = config_from_dict(
        {
            "model": {"backbone": model, "dtype": "bfloat16" if device.startswith("cuda") else "float32"},
            "tuning": {"strategy": "dora", "rank": 16, "alpha": 128.0, "dropout": 0.1, "targets": "paper"},
            "data": {"train": str(manifest), "val_fraction": 0},
            "train": {
                "epochs": 100,
                "max_steps": steps,
                "batch_size": batch,
                "log_every": 1,
                "save_every": 100000,
                "progress": False,
                "device": device,
            },
        }
    )
    train(config, out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [line for line in lines if line["type"] == "train"][2:]  # past start-up and warm-up
    waited = sum(line["data_wait_s"] for line in steady)
    computed = sum(line["step_s"] for line in steady)
    return {
        "pairs_per_s": statistics.median(line["pairs_per_s"] for line in steady),
        "data_wait_share": waited / (waited + computed),
    }


def embed_figures(manifest: Path, out: Path, model: str, device: str, released: bool) -> float:
    encoder = load_encoder(model, device=device, dtype="bfloat16" if device.startswith("cuda") else "float32")
    workers: int | str = "auto"
    if released:
        encoder = encoder.rebuilt(spec=dataclasses.replace(encoder.spec, preprocessing="released"))
        workers = 0
    data = read_manifest(manifest)
    result = embed_gallery(
        encoder, data, out, model, shard_size=256, batch_size=32, show_progress=False, num_workers=workers
    )
    return result.tiles_per_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="random-smolvlm-256m")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tiles", type=int, default=640)
    parser.add_argument("--batches", default="10,64")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = jpeg_city(folder, args.tiles, 512)
        print(f"end to end on {args.tiles} 512-px JPEG files ({args.model}, {args.device}):")
        for batch in (int(b) for b in args.batches.split(",")):
            figures = train_figures(
                manifest, folder / f"run{batch}", args.model, args.device, batch, args.steps
            )
            print(
                f"  geoloc train, batch {batch}: {figures['pairs_per_s']:.1f} pairs/s, "
                f"waiting for data {figures['data_wait_share']:.2%} of step time"
            )
        fast = embed_figures(manifest, folder / "emb-fast", args.model, args.device, released=False)
        slow = embed_figures(manifest, folder / "emb-released", args.model, args.device, released=True)
        print(f"  geoloc embed: {fast:.1f} tiles/s (one-resize, workers), {slow:.1f} (released, no workers)")


if __name__ == "__main__":
    main()
