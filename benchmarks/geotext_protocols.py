"""The three GeoText-1652 protocols side by side, on trees in the real layout (docs/benchmarks.md).

    .venv/bin/python benchmarks/geotext_protocols.py            # 3 trees of 60 test buildings

For each seed the script writes a GeoText-1652 test file (`test_951_version.json`: 4 images per
building, 3 captions per image, records in building order, and one image id given a second
record with 3 more captions at the end of the file, as the official file may hold), reads it
with geoloc's loader, gives every image and caption a unit vector (its building's direction plus
noise, so recalls are neither 0 nor 100), and scores the same vectors with every protocol
`geoloc eval --benchmark geotext1652` offers:

- benchmark: one gallery row per image, building-level hits;
- official-quirks: one gallery row per record, the official code's off-by-one labels;
- official-quirks (merged): the same labels over one row per image, geoloc's earlier way;
- paper: one gallery row per caption (the paper's eva_compute.py).

No image is opened (nor written): scoring needs only the file and the vectors.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np

from geoloc.data.geotext import load_geotext
from geoloc.eval.benchmarks import BenchmarkRequest, score_benchmark
from geoloc.eval.evaluate import Embeddings
from geoloc.eval.protocols import geotext_metrics


def write_tree(root: Path, buildings: int, seed: int) -> None:
    rng = random.Random(seed)
    records = []
    for b in range(1, buildings + 1):
        building = f"{b:04d}"
        for name in (f"{building}.jpg", "image-01.jpeg", "image-02.jpeg", "ground-1.jpg"):
            image_id = f"{building}/{name}"
            captions = [f"building {building}, {name}, caption {n}" for n in range(3)]
            records.append({"image_id": image_id, "image": f"test/{image_id}", "caption": captions})
    repeated = dict(records[rng.randrange(len(records) // 2)])
    repeated["caption"] = [f"{c}, described again" for c in repeated["caption"]]
    records.append(repeated)  # a second record of one image, after other buildings
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "test_951_version.json").write_text(json.dumps(records))


def vectors(keys: list[str], texts: list[str], seed: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres: dict[str, np.ndarray] = {}

    def vector(building: str, noise: float) -> np.ndarray:
        centre = centres.setdefault(building, rng.standard_normal(dim))
        v = centre + noise * rng.standard_normal(dim)
        return v / np.linalg.norm(v)

    images = np.stack([vector(k[:4], 1.2) for k in keys]).astype(np.float32)
    captions = np.stack([vector(t.split()[1].rstrip(","), 1.5) for t in texts]).astype(np.float32)
    return images, captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buildings", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print("| seed | protocol | gallery rows | T2I R@1 | R@5 | R@10 | I2T R@1 | R@5 | R@10 | mean |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            write_tree(root, args.buildings, seed)
            dataset = load_geotext(root, split="test", check_images=False)
            texts, image_index = dataset.texts_with_image_index()
            keys = [r.key for r in dataset.records]
            image_emb, text_emb = vectors(keys, texts, seed)
            embeddings = Embeddings(image_emb, text_emb, keys, [keys[i] for i in image_index], texts)
            rows = []
            for protocol in ("benchmark", "official-quirks", "paper"):
                request = BenchmarkRequest(benchmark="geotext1652", root=str(root), protocol=protocol)
                rows.append((protocol, score_benchmark(request, embeddings, dataset)))
            groups = dataset.groups
            merged = geotext_metrics(
                text_emb,
                image_emb,
                [groups[i] for i in image_index],
                groups,
                protocol="official-quirks",
                text_image_index=image_index,
            )
            rows.insert(2, ("official-quirks (merged)", merged))
            for name, m in rows:
                t2i, i2t = m["text_to_image"], m["image_to_text"]
                cells = [f"{v:.2f}" for v in (*t2i.values(), *i2t.values(), m["mean"])]
                print(f"| {seed} | {name} | {m['n_images']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
