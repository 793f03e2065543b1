"""Which model made an index's vectors, and the check that a query encoder is that model.

Vectors of two models live in different spaces: a query encoded by another model (or the same
backbone with another adapter, pooling or prompt) scores garbage silently. So the index manifest
records the model's full weight fingerprint, and search refuses any encoder that differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def check_same_model(record: dict[str, Any], encoder: Encoder, where: str) -> None:
    """Refuse `encoder` unless it is exactly the model that made the index at `where`."""
    if model_fingerprint(encoder) == record["fingerprint"]:
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

    try:
        encoder = load_encoder(model or record["id"], device=device, dtype=record["dtype"])
    except GeolocError as error:
        if model is not None:
            raise
        raise GeolocError(
            f"{where}: cannot load the index's model ({error}); if it moved, name it with --model"
        ) from error
    check_same_model(record, encoder, where)
    return encoder
