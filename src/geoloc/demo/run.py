"""`geoloc demo`: synthesise a city, train a tiny backbone, evaluate, show example queries; and
`geoloc demo-map` (below): the same city as a GeoTIFF, cut, indexed, searched and served.

Everything runs offline on the CPU. The tiny backbone starts from random weights, so it is
fully fine-tuned (adapters on a random model have nothing to adapt); real backbones use the
paper's DoRA recipe instead.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.config import Config, load_config
from geoloc.data.manifest import read_manifest
from geoloc.data.synth import generate_city
from geoloc.encoder.loading import load_encoder
from geoloc.eval.evaluate import evaluate
from geoloc.train.trainer import train

DEMO_CONFIG = "configs/synthetic-tiny.yaml"
"""The demo's recipe, inside the package so that an installed geoloc has it; the repository's
configs/synthetic-tiny.yaml extends it, so the two cannot drift apart."""


def demo_config(manifest: Path, minutes: float, seed: int) -> Config:
    """The demo's training config: the packaged recipe on `manifest`, within `minutes`."""
    overrides = [f"data.train={manifest}", f"train.max_minutes={minutes}", f"train.seed={seed}"]
    with resources.as_file(resources.files("geoloc").joinpath(DEMO_CONFIG)) as path:
        return load_config(path, overrides)


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
    untrained = load_encoder("tiny-smolvlm")
    before, _ = evaluate(untrained, test, batch_size=64, show_progress=False)

    print(
        f"3/4 training tiny-smolvlm for at most {minutes:g} min: full fine-tuning, because a model "
        "trained from scratch has no pretrained weights for adapters to adapt ..."
    )
    config = demo_config(manifest, minutes, seed)
    run_dir = out / "run"
    result = train(config, run_dir)

    print("4/4 scoring the best checkpoint (chosen on the validation split) on the test tiles ...")
    trained = load_encoder(run_dir)
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


# -- the real path: one georeferenced raster -> tiles -> index -> search -> map ------------------
DEFAULT_MAP_MODEL = Path("demo_out/run")  # what `make demo` trains; untrained tiny-smolvlm otherwise


def run_map_demo(
    out: Path,
    model: str | None = None,
    tiles: int = 1200,
    seed: int = 0,
    serve: bool = True,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> int:
    """The synthetic city as one UTM GeoTIFF, cut, indexed and searched in words, then served.

    With the default model, the run `make demo` trained (if it is there) has seen the training
    tiles of this same city (same seed and size), so the test descriptions find their places.
    """
    import json

    from pyproj import Geod

    from geoloc.geodata.geojson import feature_collection
    from geoloc.geodata.raster import TilingSettings, cut_raster
    from geoloc.index.build import build_index
    from geoloc.index.search import SearchIndex

    if model is None:
        model = str(DEFAULT_MAP_MODEL) if (DEFAULT_MAP_MODEL / "config.yaml").exists() else "tiny-smolvlm"
    if out.exists():
        shutil.rmtree(out)
    print(f"1/4 writing the synthetic city ({tiles} tiles) as one UTM raster ...")
    manifest = generate_city(out / "city", tiles=tiles, seed=seed, geotiff=True)
    raster = manifest.parent / "city.tif"
    print(f"    {raster}")
    print("2/4 cutting it into 150 m tiles of 128 pixels (geoloc tiles) ...")
    cut = cut_raster(raster, out / "gallery", TilingSettings(tile_m=150, overlap=0.0, px=128))
    print(
        f"    {cut.tiles} tiles, {cut.skipped_nodata} empty windows skipped, "
        f"{cut.windows_per_s:.0f} tiles/s: {cut.manifest}"
    )
    print(f"3/4 indexing the tiles with {model} ...")
    encoder = load_encoder(model)
    build_index(model, cut.manifest, out / "index", encoder=encoder)
    index = SearchIndex.open(out / "index", encoder=encoder)
    if model == "tiny-smolvlm":
        print(
            "    (an untrained model: its rankings are close to chance; run `make demo` first to train one)"
        )

    print("4/4 searching in words for three described test tiles ...")
    geod = Geod(ellps="WGS84")
    described = [r for r in read_manifest(manifest, split="test").records][:3]
    for n, record in enumerate(described, 1):
        text = record.texts[0]
        hits = index.search(text, k=5)
        print(f'Query {n}: "{text}"  (described tile at {record.lat:.5f}, {record.lon:.5f})')
        for hit in hits[:3]:
            metres = geod.inv(record.lon, record.lat, hit.lon, hit.lat)[2]
            mark = "  <- the described place" if metres < 1.0 else ""
            print(f"  {hit.rank}. {hit.key}  score {hit.score:.3f}  {metres:,.0f} m away{mark}")
        if n == 1:
            collection = feature_collection([hit.to_dict() for hit in hits], query=text, k=5)
            (out / "results.geojson").write_text(json.dumps(collection, indent=2) + "\n", encoding="utf-8")
    print(f"GeoJSON of the first query's top 5 (opens in QGIS or geojson.io): {out / 'results.geojson'}")
    if not serve:
        print(f"to see them on the map: geoloc serve {out / 'index'}")
        return 0
    import uvicorn

    from geoloc.serve.app import create_app

    print(f"serving the map on http://{host}:{port}/ : search e.g. {described[0].texts[0]!r}  (Ctrl-C stops)")
    uvicorn.run(create_app(index), host=host, port=port, log_level="warning")
    return 0
