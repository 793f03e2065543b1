"""Embed a gallery of tiles in shards, across processes, resumably: `geoloc embed`.

    torchrun --standalone --nproc_per_node 4 -m geoloc embed MODEL --data gallery/ --out emb/

The gallery (a manifest's records, in file order) is cut into shards of `shard_size` tiles;
process r takes shards r, r+N, r+2N, ... Each shard is written atomically as
`shards/shard-NNNNN.npz` (keys and vectors), so an interrupted run resumes without redoing the
finished ones, with any number of processes. When every shard is there the first process merges
them into `embeddings.npz` (`image_keys`, `image_emb`), the same keys `geoloc eval` writes.
`embed.json` records the model, the data and the shard size; a resumed run must match it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc import atomic
from geoloc.data.manifest import Dataset
from geoloc.errors import GeolocError

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder

SHARDS = "shards"
MERGED = "embeddings.npz"
DESCRIPTION = "embed.json"


@dataclass
class EmbedResult:
    out: Path
    tiles: int
    shards: int
    shards_done_here: int  # encoded by this process in this call (the rest were already there)
    tiles_per_s: float


def _shard_path(out: Path, index: int) -> Path:
    return out / SHARDS / f"shard-{index:05d}.npz"


def _check_description(out: Path, description: dict[str, Any]) -> None:
    path = out / DESCRIPTION
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise GeolocError(f"{path}: unreadable ({error}); remove the folder to start again") from error
        if existing != description:
            differing = sorted(k for k in description if existing.get(k) != description[k])
            raise GeolocError(
                f"{out} holds shards of another embedding run (differs in: {', '.join(differing)}); "
                "choose another --out or remove it"
            )


def embed_gallery(
    encoder: Encoder,
    dataset: Dataset,
    out: str | Path,
    model_name: str,
    shard_size: int = 1024,
    batch_size: int = 16,
    world: Any = None,
    show_progress: bool = True,
    num_workers: int | str = "auto",
) -> EmbedResult:
    """Embed `dataset`'s tiles into `out`, this process's shards first, then merge (first process).

    Tiles are decoded and preprocessed in `num_workers` DataLoader workers; the progress bar
    counts tiles, so it shows tiles/s."""
    from geoloc.eval.cache import model_fingerprint
    from geoloc.world import World

    world = world or World()
    if shard_size < 1:
        raise GeolocError(f"--shard-size must be at least 1, not {shard_size}")
    out = Path(out)
    records = dataset.records
    if not records:
        raise GeolocError(f"{dataset.source}: the gallery is empty")
    description = {
        "format_version": 1,
        "model": model_name,
        "model_fingerprint": model_fingerprint(encoder),
        "data": str(dataset.source),
        "keys_sha": _keys_digest([r.key for r in records]),
        "tiles": len(records),
        "shard_size": shard_size,
    }
    _check_description(out, description)
    world.barrier()
    if world.is_main:
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
        if not (out / DESCRIPTION).is_file():
            atomic.write_json(out / DESCRIPTION, description)
    world.barrier()

    n_shards = (len(records) + shard_size - 1) // shard_size
    mine = [i for i in range(world.rank, n_shards, world.size) if not _shard_path(out, i).is_file()]
    todo_tiles = sum(len(records[i * shard_size : (i + 1) * shard_size]) for i in mine)
    progress = None
    if show_progress and todo_tiles:
        from tqdm.auto import tqdm

        progress = tqdm(total=todo_tiles, unit="tile", desc=f"embedding (process {world.rank})")
    started = time.monotonic()
    for index in mine:
        shard = records[index * shard_size : (index + 1) * shard_size]
        vectors = encoder.encode_images(
            [r.image for r in shard], batch_size=batch_size, show_progress=False, num_workers=num_workers
        )
        _write_shard(_shard_path(out, index), [r.key for r in shard], vectors)
        if progress is not None:
            progress.update(len(shard))
    if progress is not None:
        progress.close()
    rate = todo_tiles / max(1e-9, time.monotonic() - started)
    world.barrier()
    if world.is_main:
        _merge(out, n_shards)
    world.barrier()
    return EmbedResult(out, len(records), n_shards, len(mine), rate)


def _keys_digest(keys: list[str]) -> str:
    import hashlib

    return hashlib.blake2b("\n".join(keys).encode(), digest_size=16).hexdigest()


def _write_shard(path: Path, keys: list[str], vectors: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, image_keys=np.array(keys, dtype=str), image_emb=vectors.astype(np.float32))


def _merge(out: Path, n_shards: int) -> None:
    missing = [i for i in range(n_shards) if not _shard_path(out, i).is_file()]
    if missing:
        raise GeolocError(f"{out}: shards {missing[:5]} are missing; run the same command again to finish")
    keys: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for index in range(n_shards):
        with np.load(_shard_path(out, index)) as shard:
            keys.append(shard["image_keys"])
            vectors.append(shard["image_emb"])
    with atomic.atomic_path(out / MERGED) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, image_keys=np.concatenate(keys), image_emb=np.concatenate(vectors))
