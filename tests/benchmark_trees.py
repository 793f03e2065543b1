"""Benchmark trees written in the real layouts of GeoText-1652 and CVG-Text (docs/benchmarks.md).

Both trees hold a train split and a test split. Their test images are distinct files, so a test
can corrupt them (and the test annotation files) to prove that training never opens them. Used
by tests/data's fixtures and by the real-file CLI tests.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200), (200, 40, 200)]


def tile(path: Path, seed: int, size: int = 24) -> None:
    """A small tile whose colours depend on `seed`, saved in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), COLOURS[seed % len(COLOURS)])
    for _ in range(6):
        x, y = rng.randrange(size), rng.randrange(size)
        image.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, x + 4, y + 4))
    image.save(path)


def write_geotext_tree(root: Path, train_buildings: int = 8, test_buildings: int = 3, seed: int = 0) -> Path:
    """GeoText-1652 as released: train.json (string captions), test_951_version.json and
    test_24G_version.json (lists of captions), images under images/{train,test}/<building>/.

    Each building has a satellite image (<id>/<id>.jpg), two drone images (image-NN.jpeg) and a
    ground image in a folder with an underscore (street_view/). One drone image has two train
    records (its captions merge). `sentences` / `bboxes` hold nulls. The records are shuffled,
    so buildings are not contiguous.
    """
    rng = random.Random(seed)
    for split, first, count in (("train", 1, train_buildings), ("test", 501, test_buildings)):
        records = []
        for b in range(first, first + count):
            building = f"{b:04d}"
            names = [f"{building}/{building}.jpg", f"{building}/image-01.jpeg", f"{building}/image-02.jpeg"]
            paths = [f"{split}/{name}" for name in names] + [f"{split}/street_view/{building}/g1.jpg"]
            ids = [*names, f"{building}/g1.jpg"]
            for n, (image_id, path) in enumerate(zip(ids, paths, strict=True)):
                tile(root / "images" / path, b * 10 + n)
                caption: str | list[str] = (
                    f"building {building} view {n}: a {'red green blue'.split()[b % 3]} roof"
                )
                if split == "test":
                    caption = [caption, f"{caption}, seen again", f"{caption}, a third time"]
                record = {
                    "image_id": image_id,
                    "image": path,
                    "caption": caption,
                    "sentences": [f"a part of {building}", None],
                    "bboxes": [[0.5, 0.5, 0.2, 0.3], None],
                }
                records.append(record)
                if split == "train" and n == 1:
                    records.append({**record, "caption": f"building {building}: a second description"})
        rng.shuffle(records)
        files = ["train.json"] if split == "train" else ["test_951_version.json", "test_24G_version.json"]
        for name in files:
            (root / name).write_text(json.dumps(records))
    return root


def cvgtext_name(lat: float, lon: float, index: int, panorama: bool) -> str:
    if panorama:
        return f"{lat:.8f},{lon:.8f}_2022-08_pano{index:04d}XYZ_d{index % 360}_z3.jpg"
    return f"{lat:.8f},{lon:.8f}_{index}.jpg"


def write_cvgtext_tree(
    root: Path,
    city: str = "NewYork",
    n_train: int = 20,
    n_test: int = 10,
    official: bool = True,
    seed: int = 0,
) -> Path:
    """One CVG-Text city as released: the `<City>` (panoramas) and `<City>-photos` (single-view)
    versions, whose union is the mixed version, each with JSON files {file_name: description}
    and satellite and OSM tiles, in the official arrangement (`CVG-text/`, tiles at the root) or
    the other one (`annotation/`, `reference/`). Panorama and single-view names alternate."""
    rng = random.Random(seed)
    annotation_root = root / ("CVG-text" if official else "annotation")
    tiles = root if official else root / "reference"
    index = 0
    for split, count in (("train", n_train), ("test", n_test)):
        entries: dict[str, dict[str, str]] = {city: {}, f"{city}-photos": {}}
        for _ in range(count):
            lat, lon = 40.70 + rng.uniform(0, 0.02), -74.01 + rng.uniform(0, 0.02)
            panorama = index % 2 == 0
            folder = city if panorama else f"{city}-photos"
            name = cvgtext_name(lat, lon, index, panorama=panorama)
            for kind in ("satellite", "OSM"):
                tile(tiles / f"{folder}-{kind}" / name, index)
            entries[folder][name] = (
                f"a street corner with a {'red green blue'.split()[index % 3]} shop, number {index}"
            )
            index += 1
        for folder, folder_entries in entries.items():
            (annotation_root / folder).mkdir(parents=True, exist_ok=True)
            (annotation_root / folder / f"{split}.json").write_text(json.dumps(folder_entries))
    return root
