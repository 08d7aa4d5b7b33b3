"""Progressive JPEGs at 1/8 scale, decoded from their DC scans alone.

A progressive JPEG stores its coefficients in several scans: first the DC coefficient of
every 8 x 8 block (often in two passes of successive approximation), then bands of AC
coefficients and their refinements, which make up ~85 % of the file. libjpeg decodes
every scan whatever the output scale, so JPEG draft mode, which makes a baseline JPEG
several times faster to decode, barely speeds up a progressive one (half of the camera
photos of the Debian wallpaper packages are progressive).

At 1/8 scale libjpeg's inverse DCT turns each block of a full-resolution component (luma,
and the chroma of a 4:4:4 file) into one pixel from its DC coefficient (``jpeg_idct_1x1``);
a subsampled chroma component is scaled by a 2 x 2 inverse DCT instead, which reads its AC
coefficients too (libjpeg scales it up in the DCT rather than upsampling it:
``jpeg_core_output_dimensions``). One more rule: libjpeg-turbo smooths the DC values of a
component none of whose AC coefficients 1-9 arrived (``decompress_smooth_data``), so one
low-band AC scan of each full-resolution component must stay. :func:`eighth_scale_scans`
hands the decoder a copy of the file with only those scans — every marker segment
(tables, restart interval, EXIF) kept, the DC scans, the scans of subsampled components
and the first low-band AC scan of each other one — and the decoded pixels are the same,
bit for bit, as from the whole file (tests/test_progressive.py checks it, so a libjpeg
that decodes otherwise fails there). At 1/2 and 1/4 every AC coefficient counts, and the
file is decoded whole.

The segment walk follows ITU-T T.81 Annex B: a marker is 0xFF then a code; inside a
scan's entropy-coded data 0xFF is always followed by 0x00 (a stuffed byte) or a restart
marker RST0-7 (0xD0-0xD7), so the next other marker ends the scan.
"""

from __future__ import annotations

import struct

#: AC coefficients (zig-zag order) one of which libjpeg-turbo must have received for a
#: component, or it smooths that component's DC values (jdcoefct.c).
_SMOOTHING_BAND = 9

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7: no length field
_PROGRESSIVE_FRAMES = {0xC2, 0xC6, 0xCA, 0xCE}  # SOF2 (Huffman), and the others


class NotProgressive(ValueError):
    """The bytes are not a progressive JPEG whose scans this module can sort out."""


def eighth_scale_scans(data: bytes) -> bytes:
    """A progressive JPEG's bytes with only the scans its 1/8-scale image is made of
    (see the module docstring): the same pixels at 1/8, decoded from a fraction of the file.

    Raises:
        NotProgressive: not a JPEG, not progressive, or a layout this walk does not know
            (the caller then decodes the file as it is).
    """
    if data[:2] != b"\xff\xd8":
        raise NotProgressive("no JPEG start-of-image marker")
    kept = [data[:2]]
    position, progressive, dropped = 2, False, 0
    scaled_up: set[int] = set()  # ids of the components with a larger inverse DCT at 1/8
    low_band_kept: set[int] = set()  # components with an AC scan of coefficients <= 9 kept
    while True:
        marker, start = _next_marker(data, position)
        if marker == EOI:
            kept.append(b"\xff\xd9")
            break
        if marker in _STANDALONE:
            raise NotProgressive(f"marker 0xFF{marker:02X} outside a scan")
        (length,) = struct.unpack_from(">H", data, start + 2)
        end = start + 2 + length
        if end > len(data):
            raise NotProgressive("a marker segment runs past the end of the file")
        if marker in _PROGRESSIVE_FRAMES:
            progressive = True
            scaled_up = _scaled_up_components(data[start + 4 : end])
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise NotProgressive(f"frame type 0xFF{marker:02X} is not progressive")
        if marker != SOS:
            kept.append(data[start:end])
            position = end
            continue
        scan_end = _entropy_end(data, end)
        count = data[start + 4]
        components = {data[start + 5 + 2 * i] for i in range(count)}
        spectral_start = data[start + 5 + 2 * count]  # Ss: 0 for a DC scan
        low_band = spectral_start <= _SMOOTHING_BAND and not components <= low_band_kept
        if spectral_start == 0 or components & scaled_up or low_band:
            kept.append(data[start:scan_end])
            if spectral_start > 0:
                low_band_kept |= components
        else:
            dropped += 1
        position = scan_end
    if not progressive:
        raise NotProgressive("no progressive frame header before the scans")
    if dropped == 0:
        raise NotProgressive("no AC scan to leave out")
    return b"".join(kept)


def coefficient_bytes(layers: list[tuple[int, int, int, int]], width: int, height: int) -> int:
    """The DCT coefficients libjpeg holds for a whole progressive image, at any output
    scale: 64 of 2 bytes a block, for each component's blocks. `layers`: PIL's
    ``(id, h, v, table)`` per component (``JpegImageFile.layer``)."""
    max_h = max((h for _, h, _, _ in layers), default=1)
    max_v = max((v for _, _, v, _ in layers), default=1)
    blocks = sum(
        -(-width * h // (8 * max_h)) * -(-height * v // (8 * max_v)) for _, h, v, _ in layers
    )
    return blocks * 64 * 2


def _scaled_up_components(frame: bytes) -> set[int]:
    """From a frame header (after its length): the ids of the components libjpeg decodes
    at 1/8 scale with an inverse DCT larger than 1 x 1 (jdmaster.c: it doubles a
    component's DCT size while the sampling factors divide evenly), whose AC counts."""
    if len(frame) < 6:
        raise NotProgressive("a frame header too short to list its components")
    count = frame[5]
    if len(frame) < 6 + 3 * count:
        raise NotProgressive("a frame header too short for its components")
    factors = [
        (frame[6 + 3 * i], frame[7 + 3 * i] >> 4, frame[7 + 3 * i] & 15) for i in range(count)
    ]
    if any(h == 0 or v == 0 for _, h, v in factors):
        raise NotProgressive("a component with a zero sampling factor")
    max_h, max_v = max(h for _, h, _ in factors), max(v for _, _, v in factors)
    return {
        component
        for component, h, v in factors
        if max_h % (h * 2) == 0 and max_v % (v * 2) == 0  # size 1 doubles at least once
    }


def _next_marker(data: bytes, position: int) -> tuple[int, int]:
    """(code, offset of its 0xFF) of the marker at `position`, fill bytes skipped."""
    if position >= len(data) or data[position] != 0xFF:
        raise NotProgressive(f"no marker at byte {position}")
    while position + 1 < len(data) and data[position + 1] == 0xFF:
        position += 1  # 0xFF fill bytes may precede a marker
    if position + 1 >= len(data):
        raise NotProgressive("the file ends inside a marker")
    return data[position + 1], position


def _entropy_end(data: bytes, position: int) -> int:
    """Offset of the first marker after a scan's entropy-coded data (not RST0-7)."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            raise NotProgressive("a scan runs to the end of the file (truncated?)")
        code = data[position + 1]
        if code == 0x00 or 0xD0 <= code <= 0xD7:
            position += 2
        elif code == 0xFF:
            position += 1  # fill byte before a marker
        else:
            return position
