"""Which model made an index's vectors, and the check that a query encoder is that model.

Vectors of two models live in different spaces: a query encoded by another model (or the same
backbone with another adapter, pooling or prompt) scores garbage silently. So the index manifest
records the model's full weight fingerprint, and search refuses any encoder that differs.

Hashing every weight takes seconds (about 2 s for SmolVLM-256M's 984 MB on one core), at every
start of `geoloc serve`. So the fingerprint of a model loaded from files is cached
(`$GEOLOC_CACHE/fingerprints`, default `~/.cache/geoloc`), keyed by what the weights are made
of: every file of the model's folders (path, size, modification and change times, inode), the
dtype, the versions of geoloc's own code and of torch, transformers, peft and safetensors. The
files are looked at before and after the load; if they changed meanwhile, or anything in the
key differs, the weights are hashed again. A preset (weights made by code) is always hashed.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoloc.cache_dirs import cache_dir
from geoloc.errors import GeolocError
from geoloc.eval.cache import model_fingerprint
from geoloc.fingerprint import tensors_digest

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder


def adapter_hash(encoder: Encoder) -> str | None:
    """A hash of the trained parts (adapter and pooling weights); None for a bare backbone."""
    tensors = encoder.trained_state()
    return tensors_digest(tensors.items(), digest_size=16) if tensors else None


def model_record(encoder: Encoder, source: str, dtype: str) -> dict[str, Any]:
    """The manifest's description of the model: how to load it and how to recognise it."""
    spec = encoder.spec
    return {
        "id": source,
        "fingerprint": model_fingerprint(encoder),
        "adapter_hash": adapter_hash(encoder),
        "family": spec.family,
        "tuning": spec.tuning.strategy,
        "pooling": spec.pooling,
        "text_template": spec.text_template,
        "image_template": spec.image_template,
        "max_text_tokens": spec.max_text_tokens,
        "dtype": dtype,
    }


def check_same_model(
    record: dict[str, Any], encoder: Encoder, where: str, fingerprint: str | None = None
) -> None:
    """Refuse `encoder` unless it is exactly the model that made the index at `where`.

    `fingerprint` is the encoder's own (`model_fingerprint`), when already known."""
    if (fingerprint or model_fingerprint(encoder)) == record["fingerprint"]:
        return
    seen = {
        "adapter_hash": adapter_hash(encoder),
        "pooling": encoder.spec.pooling,
        "text_template": encoder.spec.text_template,
        "image_template": encoder.spec.image_template,
    }
    differences = [name for name, value in seen.items() if record.get(name) != value]
    detail = f" (differs in: {', '.join(differences)})" if differences else " (its weights differ)"
    raise GeolocError(
        f"{where}: this index was built by model {record['id']!r} (fingerprint "
        f"{record['fingerprint'][:12]}); the query model is a different one{detail}. Queries must be "
        "encoded by the model that encoded the tiles: rebuild the index with this model, or search "
        "with the index's own model"
    )


def load_index_model(
    record: dict[str, Any], where: str, model: str | None = None, device: str = "cpu"
) -> Encoder:
    """Load the model an index names (or `model`, e.g. a moved copy) and check it is the same one."""
    from geoloc.encoder.loading import load_encoder

    source = model or record["id"]
    key = weights_key(source, record["dtype"])  # before the load: the files it will read
    try:
        encoder = load_encoder(source, device=device, dtype=record["dtype"])
    except GeolocError as error:
        if model is not None:
            raise
        raise GeolocError(
            f"{where}: cannot load the index's model ({error}); if it moved, name it with --model"
        ) from error
    # The cache is used only when the files were the same before and after the load.
    unchanged = key if key is not None and weights_key(source, record["dtype"]) == key else None
    fingerprint = _cached_fingerprint(unchanged) if unchanged is not None else None
    if fingerprint is None:
        fingerprint = model_fingerprint(encoder)
        if unchanged is not None:
            _store_fingerprint(unchanged, fingerprint)
    check_same_model(record, encoder, where, fingerprint)
    return encoder


def _model_folders(source: str) -> list[Path] | None:
    """The folders whose files make the weights loaded from `source`, or None when they are not
    files alone (a preset's weights are made by code) or cannot be found without the network."""
    from geoloc.encoder.presets import PRESET_FAMILIES
    from geoloc.encoder.saved import saved_backbone_source
    from geoloc.encoder.sources import resolve

    resolved = resolve(source)
    folders: list[Path] = []
    backbone = str(source)
    if resolved.saved is not None and resolved.spec is not None:
        folders.append(resolved.saved)
        backbone = saved_backbone_source(resolved.saved, resolved.spec)
    if backbone in PRESET_FAMILIES:
        return None
    if Path(backbone).is_dir():
        folders.append(Path(backbone))
    else:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(backbone, "config.json")
        if not isinstance(config, str):
            return None
        folders.append(Path(config).parent)  # the hub cache's snapshot: links to content-named blobs
    return [folder.resolve() for folder in folders]


@functools.cache  # the same for the whole process, and asked for before and after each load
def _code_versions() -> dict[str, Any]:
    """What else decides the loaded weights: geoloc's own source, and the libraries' versions."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(package.rglob("*.py")):
        digest.update(str(file.relative_to(package)).encode())
        digest.update(file.read_bytes())
    versions: dict[str, Any] = {"geoloc_source": digest.hexdigest()}
    for name in ("torch", "transformers", "peft", "safetensors"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def weights_key(source: str, dtype: str) -> str | None:
    """A key that changes whenever the weights loaded from `source` in `dtype` may change (any of
    its folders' files, geoloc's code, a library); None where the weights are not files alone."""
    try:
        folders = _model_folders(source)
        if folders is None:
            return None
        files = []
        for folder in folders:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    stat = file.stat()
                    files.append(
                        [
                            str(file),
                            stat.st_size,
                            stat.st_mtime_ns,
                            stat.st_ctime_ns,
                            stat.st_ino,
                            stat.st_dev,
                        ]
                    )
    except (OSError, ValueError, GeolocError):
        return None  # the load reports what is wrong
    described = {"dtype": dtype, "files": files, "code": _code_versions()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _cached_fingerprint(key: str) -> str | None:
    try:
        text = (cache_dir("fingerprints") / f"{key}.txt").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def _store_fingerprint(key: str, fingerprint: str) -> None:
    from geoloc import atomic

    try:
        atomic.write_text(cache_dir("fingerprints") / f"{key}.txt", fingerprint + "\n")
    except OSError:
        pass  # an unwritable cache costs time at the next start, nothing else
