"""Safe image loading: every image comes back as a fully decoded 8-bit RGB `PIL.Image.Image`.

Bad files (missing, empty, truncated, not an image, too many pixels) raise `DataError` naming the
file, so a broken tile stops a run with a message instead of a traceback, or a silently grey image.

Conversions to RGB:

- RGB: unchanged.
- L (grayscale), 1 (bilevel), P (palette), CMYK, YCbCr, LAB, HSV, RGBX: Pillow's own conversion.
  CMYK uses Pillow's plain formula, without ICC colour management.
- Anything with transparency (RGBA, LA, PA, RGBa, La, or a palette / grayscale / RGB image with a
  transparent colour): composited on a white background, so transparent areas do not turn black.
- 16-bit grayscale (I;16, I;16B, I;16L, I;16N): scaled linearly, 0..65535 -> 0..255.
- 32-bit integer (I): scaled as 16-bit when all values lie in 0..65535, else its own min..max range
  is stretched to 0..255.
- 32-bit float (F): values in 0..1 are multiplied by 255, else the min..max range is stretched to
  0..255; NaN and infinities become 0.

Only the first frame of an animated or multi-page file is read. EXIF orientation is not applied:
pixels come back as stored.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zlib
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from geoloc.choices import OnBadRecord, check_choice
from geoloc.data.manifest import Dataset, Record
from geoloc.errors import DataError

MAX_IMAGE_PIXELS = 100_000_000
"""Images with more pixels than this are refused before decoding (decompression bomb guard).

Pillow's own guard (`PIL.Image.MAX_IMAGE_PIXELS`, about 89 million pixels by default) is also
enforced, as an error rather than a warning, so the smaller of the two limits applies.
"""

# Decoders raise a zoo of exception types on corrupt input; all of them mean "bad file", not a bug.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def load_image(path: str | Path, root: Path | None = None, record: str | int | None = None) -> Image.Image:
    """Open, fully decode and convert to RGB the image at `path`.

    With `root`, a relative `path` is taken relative to `root`, and a path that leads outside
    `root` once symlinks are resolved is refused. `record` names the manifest record in error
    messages. Raises `DataError` for any unreadable, truncated, oversized or non-image file.
    """
    file = Path(path)
    to_open = file
    if root is not None:
        file, to_open = _inside_root(file, Path(root), record)
    _check_file(file, record)
    with warnings.catch_warnings():
        # Pillow only warns between its limit and twice its limit; a warning is easy to miss.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _read_errors_named(file, record):
            img = Image.open(to_open)  # the header only
        with img:
            _check_size(img, file, record)
            with _read_errors_named(file, record):
                # Decode every pixel now, so truncation surfaces here, not in a data loader worker.
                img.load()
            rgb = to_rgb(img, path=file, record=record)
            # Closing `img` below invalidates its pixels; an RGB input needs its own copy.
            return img.copy() if rgb is img else rgb


def _check_file(file: Path, record: str | int | None) -> None:
    """Refuse a missing path, a folder or an empty file, with a clearer message than Pillow's."""
    if not file.exists():
        raise DataError("image file not found", path=file, record=record)
    if not file.is_file():
        raise DataError("image path is not a file", path=file, record=record)
    if file.stat().st_size == 0:
        raise DataError("image file is empty (0 bytes)", path=file, record=record)


@contextlib.contextmanager
def _read_errors_named(file: Path, record: str | int | None) -> Generator[None]:
    """Pillow's failures while opening or decoding, as `DataError`s naming `file` and `record`.

    Used with `Image.DecompressionBombWarning` turned into an error, so Pillow's own pixel limit
    refuses a file instead of warning.
    """
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, file, record) from exc
    except UnidentifiedImageError as exc:
        raise DataError(
            "not an image file (Pillow cannot identify its format)", path=file, record=record
        ) from exc
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image: {exc}", path=file, record=record) from exc


def _check_size(img: Image.Image, file: Path, record: str | int | None) -> None:
    """Refuse an image above `MAX_IMAGE_PIXELS` from its header, before its pixels are decoded."""
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"image is {width}x{height} pixels, more than the limit of {MAX_IMAGE_PIXELS:,} "
            "pixels (refused as a possible decompression bomb)",
            path=file,
            record=record,
        )


def pil_from_any(item: str | Path | Image.Image) -> Image.Image:
    """Return `item` as a loaded RGB image: a PIL image is converted, a path is loaded."""
    if isinstance(item, Image.Image):
        filename = getattr(item, "filename", None) or None
        try:
            item.load()
        except _READ_ERRORS as exc:
            raise DataError(f"cannot read image: {exc}", path=filename) from exc
        return to_rgb(item, path=filename)
    return load_image(item)


def to_rgb(img: Image.Image, path: str | Path | None = None, record: str | int | None = None) -> Image.Image:
    """Convert a loaded image to 8-bit RGB (see the module docstring for each mode).

    Returns `img` itself when it is already RGB without transparency. `path` and `record` only
    name the image in the error raised for a mode that cannot be converted.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        message = f"cannot convert image mode {mode!r} to RGB: {exc}"
        raise DataError(message, path=path, record=record) from exc


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a 16-bit, 32-bit integer or float single-channel array to 0..255 without clipping."""
    a = values.astype(np.float64)
    if a.size == 0:
        return np.zeros(a.shape, dtype=np.uint8)
    if mode == "F":
        finite = np.isfinite(a)
        a = np.where(finite, a, 0.0)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            scaled = a * 255.0
        else:
            scaled = _stretch(a, lo, hi)
    elif mode in _SIXTEEN_BIT_MODES or (a.min() >= 0 and a.max() <= 65535):
        # 65535 / 257 == 255 exactly: the linear map of the full 16-bit range onto 8 bits.
        scaled = a / 257.0
    else:
        scaled = _stretch(a, float(a.min()), float(a.max()))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(a)
    return (a - lo) * (255.0 / (hi - lo))


def _inside_root(file: Path, root: Path, record: str | int | None) -> tuple[Path, Path]:
    """Return (the path to name in messages, the resolved path to open), refusing escapes."""
    named = file if file.is_absolute() else root / file
    try:
        real_root = root.resolve()
        real = named.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on Python < 3.13
        raise DataError(f"cannot resolve image path: {exc}", path=named, record=record) from exc
    if not real.is_relative_to(real_root):
        raise DataError(
            f"image path leads outside the data root {real_root} (it resolves to {real})",
            path=named,
            record=record,
        )
    # Open the resolved path, so a symlink swapped after the check cannot redirect the read.
    return named, real


def _bomb_error(exc: BaseException, file: Path, record: str | int | None) -> DataError:
    return DataError(f"image refused as a possible decompression bomb: {exc}", path=file, record=record)


def verify_images(
    dataset: Dataset, on_bad_record: OnBadRecord = "error", workers: int | None = None
) -> Dataset:
    """Decode every record's image once, so a bad tile is found before any work depends on it.

    Training builds its batches up front and evaluation writes its metrics at the end: an image
    that fails half-way would stop either with work lost. Here each image is fully decoded (a few
    milliseconds a tile, `workers` threads, by default up to 4) and dropped. A bad one raises a
    `DataError` naming the data file, the record (its key) and the image; with
    on_bad_record="skip" the record is left out and added to `skipped` as ("image <key>", reason).
    Returns the dataset itself when every image is good, else a new one without the bad records.
    """
    check_choice(on_bad_record, OnBadRecord, "on_bad_record")

    def problem(record: Record) -> str | None:
        try:
            load_image(record.image).close()
        except DataError as exc:
            return f"image {exc}"
        return None

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(problem, dataset.records))
    if not any(problems):
        return dataset
    kept: list[Record] = []
    skipped = list(dataset.skipped)
    for record, reason in zip(dataset.records, problems, strict=True):
        if reason is None:
            kept.append(record)
        elif on_bad_record == "error":
            raise DataError(reason, path=dataset.source, record=record.key)
        else:
            skipped.append((f"image {record.key}", reason))
    if not kept:
        raise DataError(
            f"no records left: the image of every one of the {len(dataset)} record(s) is unreadable",
            path=dataset.source,
        )
    return Dataset(records=kept, source=dataset.source, skipped=skipped)
