"""Build an index from a gallery manifest, and add or remove tiles in place.

Every change writes a complete new index folder and swaps it in (see `store`), under a lock so
that two concurrent changes cannot lose one another's work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.data.manifest import Dataset, read_manifest
from geoloc.errors import GeolocError
from geoloc.index.ann import AnnSettings
from geoloc.index.identity import load_index_model, model_record
from geoloc.index.store import MANIFEST, Tiles, index_lock, read_index, write_index

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder


def tiles_of(dataset: Dataset) -> Tiles:
    records = dataset.records
    return Tiles(
        key=[r.key for r in records],
        image=[str(r.image) for r in records],
        lat=[r.lat for r in records],
        lon=[r.lon for r in records],
        group=[r.group for r in records],
        footprint=[[list(p) for p in r.footprint] if r.footprint else None for r in records],
    )


def encode_gallery(
    encoder: Encoder,
    dataset: Dataset,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> tuple[np.ndarray, bool]:
    """(tile vectors, whether they came from the cache).

    The cache is the one `geoloc eval` fills (keyed by model weights and data content), so a
    gallery already evaluated is not encoded again. A cache miss also encodes the gallery's
    descriptions, to store a complete entry; `use_cache=False` encodes the tiles only.
    """
    # A gallery without descriptions (tiles cut from a raster) has no complete cache entry to store.
    if not use_cache or not any(r.texts for r in dataset.records):
        return encoder.encode_images([r.image for r in dataset.records], batch_size), False
    from geoloc.eval.cache import cached_embeddings

    embeddings, hit = cached_embeddings(encoder, dataset, cache_dir, batch_size=batch_size)
    return embeddings.image_emb, hit


def model_source(model: str | Path) -> str:
    """How the manifest names a model: an absolute path for a folder, else the preset or hub id."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else str(model)


def _read_gallery(gallery: str | Path, split: str | None, on_bad_record: str, index: Path) -> Dataset:
    """The gallery's records, every image decoded once; with "skip", bad ones are left out and
    listed in `<index>.skipped_records.jsonl` beside the index folder."""
    from geoloc.data.bad_records import verify_and_list

    if on_bad_record not in ("error", "skip"):
        raise GeolocError(f"on_bad_record must be 'error' or 'skip', not {on_bad_record!r}")
    # A gallery needs no descriptions: tiles cut from a raster have none.
    records = read_manifest(gallery, split, on_bad_record, require_texts=False)
    listed_as = f"{index.name}.skipped_records.jsonl"
    dataset, _ = verify_and_list(records, on_bad_record, index.parent, name=listed_as)
    return dataset


def build_index(
    model: str | Path,
    gallery: str | Path,
    out: str | Path,
    settings: AnnSettings | None = None,
    split: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    encoder: Encoder | None = None,
    on_bad_record: str = "error",
) -> dict[str, Any]:
    """Embed every tile of `gallery` with `model` into a new index folder `out`; return its manifest.

    `encoder`, when given, is the already loaded `model` (it is not loaded again).
    """
    from geoloc.encoder.loading import load_encoder

    settings = settings or AnnSettings()
    out = Path(out)
    _refuse_a_non_index(out)
    dataset = _read_gallery(gallery, split, on_bad_record, out)
    if encoder is None:
        encoder = load_encoder(model, device=device, dtype=dtype)
    vectors, _ = encode_gallery(encoder, dataset, batch_size, cache_dir, use_cache)
    with index_lock(out):
        write_index(
            out,
            vectors,
            tiles_of(dataset),
            model_record(encoder, model_source(model), dtype),
            settings,
            galleries=[str(dataset.source)],
        )
    return read_index(out).manifest


def build_index_from_geoparquet(
    model: str | Path,
    parquet: str | Path,
    out: str | Path,
    settings: AnnSettings | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """An index from a file of `geoloc index export`, without encoding again; return its manifest.

    `model` is loaded and must be the model that made the file's vectors (its fingerprint), since
    it will encode the queries.
    """
    from geoloc.index.geoparquet import read_geoparquet

    out = Path(out)
    _refuse_a_non_index(out)
    vectors, tiles, info = read_geoparquet(parquet)
    record = info["model"]
    encoder = load_index_model(record, str(parquet), str(model), device)
    with index_lock(out):
        write_index(
            out,
            vectors,
            tiles,
            model_record(encoder, model_source(model), record["dtype"]),
            settings or AnnSettings(),
            galleries=info.get("galleries", []),
        )
    return read_index(out).manifest


def _refuse_a_non_index(out: Path) -> None:
    if out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        # The new index replaces `out` whole: never a folder that is not an index (a typo'd --out).
        raise GeolocError(
            f"{out}: exists and is not a geoloc index; refusing to replace it (choose another --out)"
        )


def add_to_index(
    index_path: str | Path,
    gallery: str | Path,
    split: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    model: str | None = None,
    on_bad_record: str = "error",
) -> int:
    """Embed the tiles of `gallery` with the index's own model and add them; return how many.

    A key already in the index is refused: the index would otherwise answer one place twice.
    """
    with index_lock(index_path):
        stored = read_index(index_path)
        dataset = _read_gallery(gallery, split, on_bad_record, Path(index_path))
        present = set(stored.tiles.key)
        clashes = [r.key for r in dataset.records if r.key in present]
        if clashes:
            raise GeolocError(
                f"{dataset.source}: {len(clashes)} tile key(s) already in the index {index_path} "
                f"(first: {clashes[0]!r}); remove them first, or give the new tiles other names"
            )
        encoder = load_index_model(stored.manifest["model"], str(index_path), model, device)
        vectors, _ = encode_gallery(encoder, dataset, batch_size, cache_dir, use_cache)
        manifest = stored.manifest
        write_index(
            index_path,
            np.concatenate([stored.vectors, vectors]),
            stored.tiles.concat(tiles_of(dataset)),
            manifest["model"],
            stored.settings,
            galleries=[*manifest["galleries"], str(dataset.source)],
            created=manifest.get("created"),
        )
    return len(dataset)


def remove_from_index(index_path: str | Path, keys: list[str]) -> int:
    """Remove the tiles with these keys; return how many. Unknown keys are refused."""
    with index_lock(index_path):
        stored = read_index(index_path)
        wanted = set(keys)
        unknown = sorted(wanted - set(stored.tiles.key))
        if unknown:
            shown = ", ".join(repr(k) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise GeolocError(f"{index_path}: no tile with key {shown} in this index; nothing removed")
        keep = [i for i, key in enumerate(stored.tiles.key) if key not in wanted]
        if not keep:
            raise GeolocError(
                f"{index_path}: removing every tile would leave an empty index; delete the folder"
            )
        manifest = stored.manifest
        write_index(
            index_path,
            stored.vectors[keep],
            stored.tiles.take(keep),
            manifest["model"],
            stored.settings,
            galleries=manifest["galleries"],
            created=manifest.get("created"),
        )
    return len(stored.tiles) - len(keep)
