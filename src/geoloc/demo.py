"""`geoloc demo`: synthesise a city, train a tiny backbone, evaluate, show example queries.

Everything runs offline on the CPU. The tiny backbone starts from random weights, so it is
fully fine-tuned (adapters on a random model have nothing to adapt); real backbones use the
paper's DoRA recipe instead.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.config import config_from_dict
from geoloc.data.manifest import read_manifest
from geoloc.data.synth import generate_city
from geoloc.encoder.model import GeoEncoder
from geoloc.eval.evaluate import evaluate
from geoloc.train.trainer import train

DEMO_CONFIG: dict[str, Any] = {
    "model": {"backbone": "tiny-smolvlm", "pooling": "eos"},
    "tuning": {"strategy": "full"},
    "loss": {"temperature": 0.05, "direction": "symmetric"},
    "train": {
        "epochs": 8,
        "batch_size": 32,
        "lr": 1.0e-3,
        "warmup_ratio": 0.05,
        "eval_every": 200,
        "save_every": 200,
        "log_every": 20,
    },
}


def _row(name: str, metrics: dict[str, Any]) -> str:
    t2i = metrics["text_to_image"]
    return f"| {name} | {t2i['R@1']:.1f} | {t2i['R@5']:.1f} | {t2i['R@10']:.1f} |"


def run_demo(out: Path, tiles: int = 1200, minutes: float = 2.5, seed: int = 0) -> int:
    started = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    print(f"1/4 synthesising a city of {tiles} tiles in {out / 'city'} ...")
    manifest = generate_city(out / "city", tiles=tiles, seed=seed)
    test = read_manifest(manifest, split="test")

    print("2/4 scoring the untrained tiny backbone (random weights) on the test tiles ...")
    untrained = GeoEncoder.load("tiny-smolvlm")
    before, _ = evaluate(untrained, test, batch_size=64, show_progress=False)

    print(
        f"3/4 training tiny-smolvlm for at most {minutes:g} min: full fine-tuning, because a model "
        "trained from scratch has no pretrained weights for adapters to adapt ..."
    )
    data = {**DEMO_CONFIG, "data": {"train": str(manifest)}}
    config = config_from_dict(data, [f"train.max_minutes={minutes}", f"train.seed={seed}"])
    run_dir = out / "run"
    result = train(config, run_dir)

    print("4/4 scoring the best checkpoint (chosen on the validation split) on the test tiles ...")
    trained = GeoEncoder.load(run_dir)
    after, embeddings = evaluate(trained, test, batch_size=64, show_progress=False)

    n_images = after["n_images"]
    print()
    print(f"Text -> image retrieval on {n_images} held-out test tiles ({after['n_texts']} descriptions)")
    print(f"chance: R@1 {100 / n_images:.1f}, R@5 {500 / n_images:.1f}, R@10 {1000 / n_images:.1f}")
    print("| model | R@1 | R@5 | R@10 |")
    print("|---|---|---|---|")
    print(_row("untrained", before))
    print(_row(f"trained ({result['steps']} steps)", after))
    print()
    _print_examples(test, embeddings)
    print(f"\nrun directory: {run_dir}   total time: {time.monotonic() - started:.0f} s")
    return 0


def _print_examples(test: Any, embeddings: Any) -> None:
    records = {r.key: r for r in test.records}
    picks = np.linspace(0, len(embeddings.texts) - 1, 3).astype(int)
    for n, i in enumerate(picks, 1):
        text, truth = embeddings.texts[i], embeddings.text_image_keys[i]
        # The evaluation already encoded every test description: rank with its vector.
        scores = embeddings.image_emb @ embeddings.text_emb[i]
        print(f'Example {n}: "{text}"')
        for rank, j in enumerate(np.argsort(-scores)[:3], 1):
            record = records[embeddings.image_keys[j]]
            mark = "  <- the described tile" if record.key == truth else ""
            where = f"lat {record.lat:.5f}, lon {record.lon:.5f}"
            print(f"  {rank}. {record.key}  {where}  score {scores[j]:.3f}{mark}")
