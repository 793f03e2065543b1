"""How far left padding moves a vector from right padding, against bfloat16's own noise.

Builds a SmolVLM-256M model folder from the shipped real files (full depth, random bf16 weights),
then encodes texts of different lengths padded on the left and on the right. For scale it also
prints the difference between a right-padded batch and each text encoded alone: the rounding
noise that batch shapes alone cause in that precision.

    python benchmarks/padding_side.py                 # bfloat16 and float32, 30 layers
    python benchmarks/padding_side.py --layers 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from geoloc import load_encoder
from geoloc.encoder.model_files import build_random_checkpoint

TEXTS = [
    "a red roof",
    "a long white warehouse beside a car park with trees along its northern edge and a road",
    "there is a small blue round house along the bottom; a road runs east-west along the top",
]


def _gap(a: np.ndarray, b: np.ndarray) -> str:
    return f"max |diff| {np.abs(a - b).max():.2e}, min cosine {(a * b).sum(axis=1).min():.7f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="layers per tower (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_random_checkpoint(
            "SmolVLM-256M-Instruct", Path(tmp) / "model", layers=args.layers, dtype="bfloat16"
        )
        for dtype in ("bfloat16", "float32"):
            right = load_encoder(folder, dtype=dtype, spec_overrides={"padding_side": "right"})
            left = load_encoder(folder, dtype=dtype, spec_overrides={"padding_side": "left"})
            right_vectors = right.encode_text(TEXTS)
            alone = np.concatenate([right.encode_text([text]) for text in TEXTS])
            print(f"{dtype}: left vs right padding: {_gap(left.encode_text(TEXTS), right_vectors)}")
            print(f"{dtype}: right-padded batch vs each text alone: {_gap(right_vectors, alone)}")


if __name__ == "__main__":
    main()
