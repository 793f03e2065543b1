import json
from collections import Counter
from pathlib import Path

from PIL import Image

from geoloc.data.manifest import read_manifest
from geoloc.data.synth import COLOURS, describe, random_scene


def test_city_is_a_valid_manifest_with_splits(small_city: Path) -> None:
    dataset = read_manifest(small_city)
    assert len(dataset) == 200
    splits = Counter(r.split for r in dataset.records)
    assert splits == {"train": 160, "val": 20, "test": 20}
    for record in dataset.records[:10]:
        assert Image.open(record.image).size == (128, 128)
        assert 2 <= len(record.texts) <= 4 and len(set(record.texts)) == len(record.texts)
        assert -90 <= record.lat <= 90 and -180 <= record.lon <= 180


def test_same_seed_same_city(tmp_path: Path) -> None:
    from geoloc.data.synth import generate_city

    a = generate_city(tmp_path / "a", tiles=12, seed=5).read_text()
    b = generate_city(tmp_path / "b", tiles=12, seed=5).read_text()
    c = generate_city(tmp_path / "c", tiles=12, seed=6).read_text()
    assert a == b and a != c


def test_descriptions_come_from_the_scene_and_vary() -> None:
    import random

    rng = random.Random(0)
    texts = []
    for _ in range(200):
        scene = random_scene(rng)
        text = describe(scene, rng)
        # The main building's colour is always said (a synonym of it).
        from geoloc.data.synth import COLOUR_WORDS

        assert any(word in text for word in COLOUR_WORDS[scene.main.colour])
        assert "tiles/" not in text and not any(ch.isdigit() for ch in text)
        texts.append(text)
    assert len(set(texts)) == len(texts)
    # No single colour word names a tile: each is used by many descriptions.
    for colour in COLOURS:
        assert sum(colour in t for t in texts) > 5


def test_lines_are_json_objects(small_city: Path) -> None:
    rows = [json.loads(line) for line in small_city.read_text().splitlines()]
    assert {"image", "texts", "lat", "lon", "group", "split"} <= set(rows[0])
