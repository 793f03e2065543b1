"""Tests for geoloc.data.images: safe decoding, and conversion of every common mode to RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoloc.data import images
from geoloc.data.images import load_image, pil_from_any, to_rgb
from geoloc.errors import DataError


def assert_names(exc: pytest.ExceptionInfo[DataError], path: Path, record: str | int | None) -> None:
    message = str(exc.value)
    assert str(path) in message
    if record is not None:
        assert f"record {record}" in message
        assert exc.value.record == record


def save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def noise(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming a huge bilevel image, with no pixel data: costs nothing to make."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


# --- good files ---------------------------------------------------------------------------------


def test_rgb_png_loads_with_exact_pixels(tmp_path: Path) -> None:
    src = noise()
    path = save(src, tmp_path / "a.png")
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(src))


def test_loaded_image_survives_file_removal(tmp_path: Path) -> None:
    # The pixels must be fully decoded and owned, not read lazily from the file.
    path = save(noise(), tmp_path / "a.png")
    img = load_image(path)
    path.unlink()
    assert img.getpixel((0, 0)) == noise().getpixel((0, 0))


def test_relative_path_is_taken_from_root(tmp_path: Path) -> None:
    (tmp_path / "tiles").mkdir()
    save(Image.new("RGB", (2, 2), (1, 2, 3)), tmp_path / "tiles" / "t.png")
    img = load_image("tiles/t.png", root=tmp_path)
    assert img.getpixel((1, 1)) == (1, 2, 3)


def test_symlink_inside_root_is_allowed(tmp_path: Path) -> None:
    save(Image.new("RGB", (2, 2), (9, 9, 9)), tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert load_image(tmp_path / "link.png", root=tmp_path).getpixel((0, 0)) == (9, 9, 9)


# --- bad files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(DataError, match="not found") as exc:
        load_image(path, record="line 4")
    assert_names(exc, path, "line 4")


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a file") as exc:
        load_image(tmp_path, record=3)
    assert_names(exc, tmp_path, 3)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty \(0 bytes\)") as exc:
        load_image(path, record="row 2")
    assert_names(exc, path, "row 2")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    data = encoded(noise(), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read image: .*truncated") as exc:
        load_image(path, record="line 7")
    assert_names(exc, path, "line 7")


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(DataError, match="not an image file") as exc:
        load_image(path, record="line 1")
    assert_names(exc, path, "line 1")


def test_decompression_bomb_refused_by_pillow_guard(tmp_path: Path) -> None:
    path = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(DataError, match="decompression bomb") as exc:
        load_image(path, record="line 2")
    assert_names(exc, path, "line 2")


def test_decompression_bomb_refused_by_own_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With Pillow's guard switched off, geoloc's own size check must still refuse the image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    expected = "image is 30000x30000 pixels, more than the limit of 100,000,000"
    with pytest.raises(DataError, match=expected) as exc:
        load_image(path, record="line 2")
    assert_names(exc, path, "line 2")


def test_pillow_bomb_warning_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between Pillow's limit and twice it, Pillow only warns; that must still refuse the image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = save(Image.new("RGB", (40, 40)), tmp_path / "big.png")  # 1600 pixels: a warning
    with pytest.raises(DataError, match="decompression bomb") as exc:
        load_image(path, record="row 5")
    assert_names(exc, path, "row 5")


def test_own_limit_is_the_module_constant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    path = save(Image.new("RGB", (20, 20)), tmp_path / "a.png")
    with pytest.raises(DataError, match="20x20 pixels, more than the limit of 100 ") as exc:
        load_image(path, record="line 9")
    assert_names(exc, path, "line 9")


def test_symlink_out_of_root_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    save(Image.new("RGB", (2, 2)), outside / "secret.png")
    link = root / "tile.png"
    link.symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match="leads outside the data root") as exc:
        load_image(link, root=root, record="line 3")
    assert_names(exc, link, "line 3")


def test_dotdot_out_of_root_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    save(Image.new("RGB", (2, 2)), tmp_path / "secret.png")
    with pytest.raises(DataError, match="leads outside the data root") as exc:
        load_image("../secret.png", root=root, record="row 2")
    assert_names(exc, root / "../secret.png", "row 2")


# --- conversions --------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
    img = load_image(path)
    assert img.mode == "RGB"
    # JPEG is lossy: pure red within a few levels.
    assert np.abs(pixels(img)[4, 4] - [255, 0, 0]).max() <= 3


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 256, 1000, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "g16.png")
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    img = load_image(path)
    assert img.mode == "RGB"
    # Clipping would turn everything above 255 into white; scaling keeps 1000 dark.
    np.testing.assert_array_equal(pixels(img)[0, :, 0], [0, 1, 4, 128, 255])
    np.testing.assert_array_equal(pixels(img)[..., 0], pixels(img)[..., 2])


def test_int32_in_16bit_range_is_scaled_as_16bit() -> None:
    img = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert img.mode == "I"
    np.testing.assert_array_equal(pixels(pil_from_any(img))[0, :, 1], [0, 128, 255])


def test_int32_outside_16bit_range_is_stretched() -> None:
    img = Image.fromarray(np.array([[-100, 0, 300]], dtype=np.int32))
    np.testing.assert_array_equal(pixels(pil_from_any(img))[0, :, 0], [0, 64, 255])


def test_float_image(tmp_path: Path) -> None:
    unit = save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), tmp_path / "f.tif")
    with Image.open(unit) as stored:
        assert stored.mode == "F"
    np.testing.assert_array_equal(pixels(load_image(unit))[0, :, 0], [0, 128, 255])
    wide = Image.fromarray(np.array([[np.nan, 0.0, 5.0, 10.0]], dtype=np.float32))
    np.testing.assert_array_equal(pixels(pil_from_any(wide))[0, :, 0], [0, 0, 128, 255])


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    src = Image.new("RGBA", (3, 1))
    src.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red
    src.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    src.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    img = load_image(save(src, tmp_path / "a.png"))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (0, 0, 255)
    assert all(126 <= v <= 128 for v in img.getpixel((2, 0)))


def test_la_composited_on_white(tmp_path: Path) -> None:
    src = Image.new("LA", (2, 1))
    src.putpixel((0, 0), (0, 0))
    src.putpixel((1, 0), (50, 255))
    img = load_image(save(src, tmp_path / "la.png"))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (50, 50, 50)


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    src = Image.new("P", (2, 1))
    src.putpalette([255, 0, 0, 0, 255, 0])
    src.putpixel((1, 0), 1)
    path = save(src, tmp_path / "p.png", transparency=0)
    with Image.open(path) as stored:
        assert stored.mode == "P"
    img = load_image(path)
    assert img.getpixel((0, 0)) == (255, 255, 255)  # palette entry 0 is transparent
    assert img.getpixel((1, 0)) == (0, 255, 0)


def test_palette_without_transparency(tmp_path: Path) -> None:
    src = Image.new("P", (2, 1))
    src.putpalette([255, 0, 0, 0, 255, 0])
    src.putpixel((1, 0), 1)
    img = load_image(save(src, tmp_path / "p.png"))
    assert [img.getpixel((x, 0)) for x in range(2)] == [(255, 0, 0), (0, 255, 0)]


def test_grayscale_and_bilevel(tmp_path: Path) -> None:
    gray = load_image(save(Image.new("L", (2, 2), 100), tmp_path / "l.png"))
    assert gray.mode == "RGB" and gray.getpixel((1, 1)) == (100, 100, 100)
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    img = load_image(save(bits, tmp_path / "b.png"))
    assert [img.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


def test_pil_from_any_passes_images_through() -> None:
    rgb = Image.new("RGB", (2, 2), (5, 6, 7))
    assert pil_from_any(rgb) is rgb
    cmyk = pil_from_any(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0)) == (255, 0, 0)


def test_pil_from_any_loads_paths(tmp_path: Path) -> None:
    path = save(Image.new("L", (2, 2), 7), tmp_path / "l.png")
    assert pil_from_any(path).getpixel((0, 0)) == (7, 7, 7)
    assert pil_from_any(str(path)).mode == "RGB"
    with pytest.raises(DataError, match="not found") as exc:
        pil_from_any(tmp_path / "gone.png")
    assert_names(exc, tmp_path / "gone.png", None)


def test_pil_from_any_reports_truncated_open_image(tmp_path: Path) -> None:
    data = encoded(noise(), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as lazy, pytest.raises(DataError, match="truncated") as exc:
        pil_from_any(lazy)
    assert_names(exc, path, None)


def test_to_rgb_refuses_unconvertible_mode() -> None:
    class Weird:
        mode = "XYZ"
        info: dict[str, object] = {}

        def convert(self, mode: str) -> Image.Image:
            raise ValueError("conversion not supported")

    with pytest.raises(DataError, match="cannot convert image mode 'XYZ'") as exc:
        to_rgb(Weird(), path="w.img", record="line 1")  # ty: ignore[invalid-argument-type]  a wrong value on purpose: its refusal is the test
    assert_names(exc, Path("w.img"), "line 1")
