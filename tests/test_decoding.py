"""Safe decoding: bad files raise ImageDecodeError naming the file, good ones come back RGB."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multigrain.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    load_rgb,
)
from multigrain.data.resize import resize_longest_side
from multigrain.runtime.errors import MultiGrainError


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus mild noise: photo-like, compresses well."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for phase in rng.uniform(0, 2 * np.pi, size=3):
        wave = np.sin(x / width * 3.0 + phase) * np.cos(y / height * 2.0 - phase)
        channels.append(128 + 100 * wave)
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 2, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb_png(path: Path, width: int, height: int) -> None:
    """A valid-looking PNG of a few dozen bytes whose header claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(diff**2)))


# --------------------------------------------------------------------------- bad files


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        name: tmp_path / name
        for name in ["truncated.jpg", "empty.jpg", "text.jpg", "bomb.png", "missing.jpg"]
    }
    full = tmp_path / "full.jpg"
    smooth_image(64, 48).save(full, quality=90)
    data = full.read_bytes()
    files["truncated.jpg"].write_bytes(data[: len(data) // 2])
    files["empty.jpg"].write_bytes(b"")
    files["text.jpg"].write_text("this is not an image\n")
    write_bomb_png(files["bomb.png"], 100_000, 100_000)
    return files


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated.jpg", "truncated"),
        ("empty.jpg", "empty file"),
        ("text.jpg", "not an image"),
        ("missing.jpg", "no such file"),
        ("bomb.png", "has 100000×100000 = 10000000000 pixels, over the limit of 178956970"),
    ],
)
def test_bad_files_raise_decode_error_naming_the_file(
    bad_files: dict[str, Path], name: str, reason: str
) -> None:
    path = bad_files[name]
    with pytest.raises(ImageDecodeError, match=f"cannot read image {path}: ") as caught:
        decode_image(path)
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert isinstance(caught.value, MultiGrainError)
    with pytest.raises(ImageDecodeError):
        load_rgb(path)  # the old entry point fails the same way


def test_bomb_is_refused_from_its_header_and_says_how_to_override(
    bad_files: dict[str, Path],
) -> None:
    assert bad_files["bomb.png"].stat().st_size < 100
    with pytest.raises(ImageDecodeError, match="decompression bomb.*raise --max-pixels"):
        decode_image(bad_files["bomb.png"], longest_side=224)


def test_max_pixels_is_per_call_and_overrides_pil_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "small.png"
    smooth_image(100, 80).save(path)
    with pytest.raises(ImageDecodeError, match="100×80 = 8000 pixels, over the limit of 7999"):
        decode_image(path, max_pixels=7999)
    assert decode_image(path, max_pixels=8000).size == (100, 80)
    # PIL's own global limit neither fires first nor is left changed.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(path).size == (100, 80)
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert DEFAULT_MAX_PIXELS == 2 * 89_478_485


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    smooth_image(8, 8).save(path)
    with pytest.raises(MultiGrainError, match="longest_side must be >= 1"):
        decode_image(path, longest_side=0)
    with pytest.raises(MultiGrainError, match="max_pixels must be >= 1"):
        decode_image(path, max_pixels=0)


# --------------------------------------------------------------------------- good files


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_decodes_to_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"image_{mode.replace(';', '_')}.tif"
    smooth_image(40, 30).convert("RGBA" if mode == "PA" else "RGB").convert(mode).save(path)
    with Image.open(path) as raw:
        assert raw.mode == mode
    image = decode_image(path)
    assert image.mode == "RGB"
    assert image.size == (40, 30)


def test_common_file_types_decode_to_rgb(tmp_path: Path) -> None:
    source = smooth_image(40, 30)
    cmyk, deep, rgba, palette = (tmp_path / n for n in ["c.jpg", "d.png", "r.png", "p.png"])
    source.convert("CMYK").save(cmyk, quality=95)
    Image.fromarray(np.asarray(source.convert("L")).astype(np.uint16) * 257).save(deep)
    source.convert("RGBA").save(rgba)
    source.convert("P").save(palette)
    for path, mode in [(cmyk, "CMYK"), (deep, "I;16"), (rgba, "RGBA"), (palette, "P")]:
        with Image.open(path) as raw:
            assert raw.mode == mode
        image = decode_image(path)
        assert (image.mode, image.size) == ("RGB", (40, 30))
    # 16-bit: the high byte is kept; RGBA: alpha dropped, colours unchanged.
    gray = np.asarray(source.convert("L"))
    np.testing.assert_array_equal(np.asarray(decode_image(deep))[..., 1], gray)
    np.testing.assert_array_equal(np.asarray(decode_image(rgba)), np.asarray(source))
    # CMYK JPEG: colours survive the round trip roughly.
    error = np.abs(np.asarray(decode_image(cmyk), dtype=np.int16) - np.asarray(source))
    assert error.mean() < 10


def test_transparent_palette_decodes_without_warning(tmp_path: Path) -> None:
    path = tmp_path / "transparent.png"
    smooth_image(20, 10).convert("P").save(path, transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(path).mode == "RGB"


@pytest.mark.parametrize("longest_side", [None, 200])
def test_exif_orientation_6_swaps_width_and_height(
    tmp_path: Path, longest_side: int | None
) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    smooth_image(900, 300).save(path, exif=exif, quality=90)
    image = decode_image(path, longest_side=longest_side)
    if longest_side is None:
        assert image.size == (300, 900)
    else:  # drafted to 1/4 scale: 225 x 75 stored, portrait once rotated
        assert image.size == (75, 225)


# --------------------------------------------------------------------------- draft mode


@pytest.mark.parametrize(
    ("size", "longest_side"), [((1200, 900), 224), ((1200, 900), 500), ((700, 1000), 224)]
)
def test_draft_keeps_longest_side_and_matches_full_decode(
    tmp_path: Path, size: tuple[int, int], longest_side: int
) -> None:
    path = tmp_path / "photo.jpg"
    smooth_image(*size).save(path, quality=92)
    full = decode_image(path)
    drafted = decode_image(path, longest_side=longest_side)
    assert full.size == size
    assert longest_side <= max(drafted.size) < max(size)  # draft did shrink it
    assert max(drafted.size) < 4 * longest_side
    reference = resize_longest_side(full, longest_side)
    fast = resize_longest_side(drafted, longest_side)
    assert fast.size == reference.size
    assert psnr(fast, reference) > 30


def test_draft_hint_is_ignored_for_small_jpegs_and_other_formats(tmp_path: Path) -> None:
    small, png = tmp_path / "small.jpg", tmp_path / "big.png"
    smooth_image(300, 200).save(small)
    smooth_image(1000, 800).save(png)
    assert decode_image(small, longest_side=224).size == (300, 200)
    assert decode_image(png, longest_side=224).size == (1000, 800)
