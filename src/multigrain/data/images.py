"""Safe image decoding: any file on disk -> an upright RGB ``PIL.Image``.

:func:`decode_image` is the one entry point. It

1. reads only the header first and refuses images over a pixel budget before any pixel
   is decoded (decompression bombs: a 100 kB PNG can claim 10^10 pixels);
2. for JPEGs, optionally lets libjpeg decode at 1/2, 1/4 or 1/8 scale (``draft`` mode)
   when the caller will shrink the image anyway -- several times faster at s = 224-500;
   a progressive JPEG decoded at 1/8 is read from only the scans that scale needs
   (:mod:`.progressive`: the same pixels);
3. applies the EXIF orientation and converts every PIL mode to 8-bit RGB;
4. turns every failure (missing, empty, truncated, foreign or corrupt file) into an
   :class:`ImageDecodeError` that names the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from multigrain.data.progressive import NotProgressive, coefficient_bytes, eighth_scale_scans
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

#: Default pixel budget of :func:`decode_image`: 2 x PIL's default ``MAX_IMAGE_PIXELS``
#: (89,478,485), i.e. the size at which PIL itself would raise ``DecompressionBombError``.
#: About 13,400 x 13,400 pixels, or 537 MB once decoded to RGB.
DEFAULT_MAX_PIXELS = 178_956_970

# Integer modes that ``Image.convert("RGB")`` does not rescale to 8 bits.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# Exceptions PIL's plugins raise on malformed files. ``MultiGrainError`` subclasses
# ValueError, so ``ImageDecodeError`` is re-raised before these are caught.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)

# Guards the temporary change of PIL's global ``MAX_IMAGE_PIXELS`` (see _pil_limit_off).
_PIL_LIMIT_LOCK = threading.Lock()


class ImageDecodeError(MultiGrainError):
    """An image file that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str, *, hint: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        message = f"cannot read image {path}: {reason}"
        super().__init__(f"{message}; {hint}" if hint else message)


class ImageOverPixelLimit(ImageDecodeError):
    """An image whose header claims more pixels than the caller allows (a bomb?)."""


@contextlib.contextmanager
def _pil_limit_off() -> Iterator[None]:
    """Disable PIL's own decompression-bomb check for the duration of the block.

    PIL checks ``Image.MAX_IMAGE_PIXELS`` (a module global) inside ``Image.open`` and
    warns or raises before we see the header, so our per-call ``max_pixels`` could never
    be raised above it. We set the global to None only inside this block, under a lock,
    and restore it afterwards; the block covers header parsing (microseconds) and, only for
    images larger than PIL's limit that the caller allowed, the decode itself. Other
    threads calling ``Image.open`` directly during that window skip PIL's check.
    """
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16/32-bit integer images (e.g. 16-bit PNGs) keep their 8 most significant bits when
    their values exceed 255; float images (mode ``F``) are clipped to [0, 255]. Alpha is
    dropped, not composited: the colour channels are kept as stored, as
    ``convert("RGB")`` and torchvision's ``ImageFolder`` do, so pretrained pipelines see
    the same pixels (a transparent region shows whatever colour it stores, often black).
    """
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        values = np.asarray(image)
        if image.mode != "F" and values.size and int(values.max()) > 255:
            values = values.astype(np.int64) >> 8
        gray = np.clip(values, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # 2-D uint8 -> mode "L"
    if image.mode == "P" and "transparency" in image.info:
        # Via RGBA: PIL warns when a palette image with transparency goes straight to RGB.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _draft_size(width: int, height: int, longest_side: int) -> tuple[int, int]:
    """The ``draft`` request that keeps the decoded longest side >= ``longest_side``.

    libjpeg scales by 1/s with s in {1, 2, 4, 8} and PIL picks the largest
    s <= min(width // w, height // h) for a request (w, h), so each decoded side is
    ceil(side / s) >= the requested one. Only the longest side matters (it is the same
    before and after an EXIF rotation), so the other side's request is 1 pixel.
    """
    if width >= height:
        return longest_side, 1
    return 1, longest_side


def _upright(image: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block only costs the rotation."""
    try:
        # in place: a rotated copy beside the decoded image would double its peak memory
        ImageOps.exif_transpose(image, in_place=True)
    except _DECODE_ERRORS as error:
        logger.warning("ignoring unreadable EXIF orientation of %s: %s", path, error)
    return image


def _short_reason(error: BaseException) -> str:
    """One line describing a PIL/OS failure, without repeating the path."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, UnidentifiedImageError):
        return "not an image in a format PIL can read"
    text = str(error).splitlines()[0] if str(error) else ""
    if "truncated" in text.lower() or isinstance(error, EOFError):
        return f"truncated file ({text or type(error).__name__})"
    return text or type(error).__name__


def decode_image(
    path: str | Path,
    *,
    longest_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode an image file into an upright 8-bit RGB image, safely.

    Args:
        path: the image file.
        longest_side: the size the caller will resize to (s in SPEC §4), as a hint. For
            JPEGs, libjpeg then decodes at the smallest 1/2, 1/4 or 1/8 scale whose longest
            side is still >= ``longest_side`` (DCT-domain downscaling, much faster than a
            full decode). The image is *not* resized to exactly ``longest_side``: its
            longest side is >= ``longest_side`` (or the full size, if smaller), so resize
            it afterwards (``multigrain.data.resize.resize_longest_side``). Other formats
            ignore the hint. None decodes at full size.
        max_pixels: refuse images whose header claims more pixels (``width * height``)
            than this, before decoding any pixel.

    Returns:
        A fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, size (W, H), with the EXIF
        orientation applied. Alpha is dropped (see :func:`_to_rgb`); multi-frame files
        give their first frame.

    Raises:
        ImageDecodeError: the file is missing, empty, truncated, not an image, or over
            ``max_pixels``. ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (a PIL global set
            by some other code) would make PIL fill truncated files with grey instead.
    """
    path = Path(path)
    if longest_side is not None and longest_side < 1:
        raise MultiGrainError(f"longest_side must be >= 1 pixel, got {longest_side}")
    if max_pixels < 1:
        raise MultiGrainError(f"max_pixels must be >= 1, got {max_pixels}")
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageDecodeError(path, "empty file (0 bytes)", hint="remove the file")
        with _pil_limit_off():
            opened = Image.open(path)
        with opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageOverPixelLimit(
                    path,
                    f"has {width}×{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} (a decompression bomb?): raise --max-pixels if the image "
                    "is genuine",
                )
            if longest_side is not None and opened.format in ("JPEG", "MPO"):
                request = _draft_size(width, height, longest_side)
                opened.draft("RGB", request)
                fewer = _fewer_scans(path, opened, request)
                if fewer is not None:
                    with fewer:
                        return _loaded_rgb(fewer, path)
            return _loaded_rgb(opened, path)
    except ImageDecodeError:
        raise
    except _DECODE_ERRORS as error:
        raise ImageDecodeError(
            path, _short_reason(error), hint="re-encode or remove the file"
        ) from error


def _loaded_rgb(opened: Image.Image, path: Path) -> Image.Image:
    width, height = opened.size
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and width * height > pil_limit:
        # Some plugins (GIF, TIFF) re-check PIL's limit while decoding.
        with _pil_limit_off():
            opened.load()
    else:
        opened.load()
    return _to_rgb(_upright(opened, path))


def _fewer_scans(path: Path, opened: Image.Image, request: tuple[int, int]) -> Image.Image | None:
    """A progressive JPEG that draft mode decodes at 1/8, reopened from only the scans that
    scale is made of (:mod:`.progressive`: the same pixels, ~2.7x faster); None otherwise."""
    if opened.format != "JPEG" or not opened.info.get("progressive"):
        return None
    if getattr(opened, "decoderconfig", (1,))[:1] != (8,):
        return None
    try:
        reduced = eighth_scale_scans(path.read_bytes())
    except NotProgressive:
        return None  # an unusual layout: decoded whole, as before
    with _pil_limit_off():  # the size was checked against the limit already
        fewer = Image.open(io.BytesIO(reduced))
    fewer.draft("RGB", request)
    return fewer


class DecodedSize(NamedTuple):
    """What decode_image decodes (size, mode, format); stored_pixels: the file's own."""

    width: int
    height: int
    mode: str
    format: str
    stored_pixels: int  # what the pixel limit applies to (a JPEG's before its draft scale)
    #: A progressive JPEG's DCT coefficients, which libjpeg holds for the whole file at
    #: any scale (2 bytes each, 64 a block of each component); 0 for any other file.
    coefficient_bytes: int = 0


def decoded_size(path: str | Path, *, longest_side: int | None = None) -> DecodedSize:
    """What :func:`decode_image` decodes from `path` with this `longest_side`, from the
    header alone (weighs a decode before any pixel is decoded). Raises ImageDecodeError."""
    path = Path(path)
    try:
        with _pil_limit_off():
            opened = Image.open(path)
        with opened:
            width, height = opened.size
            coefficients = 0
            if opened.format in ("JPEG", "MPO") and opened.info.get("progressive"):
                coefficients = coefficient_bytes(getattr(opened, "layer", []), width, height)
            if longest_side is not None and opened.format in ("JPEG", "MPO"):
                opened.draft("RGB", _draft_size(width, height, longest_side))
            return DecodedSize(
                *opened.size, mode=opened.mode, format=opened.format or "",
                stored_pixels=width * height, coefficient_bytes=coefficients,
            )  # fmt: skip
    except _DECODE_ERRORS as error:
        raise ImageDecodeError(path, _short_reason(error), hint="re-encode it") from error


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file into an upright RGB image at full size.

    Same as ``decode_image(path)``: EXIF orientation applied, any mode (L, P, RGBA, CMYK,
    I;16, ...) converted to RGB, default pixel budget.

    Args:
        path: the image file.

    Returns:
        A fully decoded ``PIL.Image.Image`` in mode ``"RGB"``, size (W, H).

    Raises:
        ImageDecodeError (a MultiGrainError): the file is missing, truncated or not an
            image.
    """
    return decode_image(path)
