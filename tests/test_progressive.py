"""Progressive JPEGs at 1/8 scale: decoded from fewer scans, to the same pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from multigrain.data.images import decode_image
from multigrain.data.progressive import NotProgressive, eighth_scale_scans


def _photo(width: int = 1280, height: int = 960, seed: int = 0) -> Image.Image:
    """Edges, gradients and noise in colour: every AC band and both chroma planes carry
    something, so a scan left out that mattered would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack(
        [
            128 + 90 * np.sin(x / 37.0) * np.cos(y / 23.0),
            255 * ((x // 61 + y // 47) % 2),
            x / width * 255,
        ],
        axis=2,
    )
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, progressive=True, **options)
    return buffer.getvalue()


def _at_eighth(data: bytes) -> np.ndarray:
    opened = Image.open(io.BytesIO(data))
    opened.draft("RGB", (opened.width // 8, 1))
    assert opened.decoderconfig[0] == 8
    return np.asarray(opened.convert("RGB"))


@pytest.mark.parametrize(
    "options",
    [
        {},  # 4:2:0: chroma scaled by a 2 x 2 inverse DCT, its AC scans kept
        {"subsampling": 0},  # 4:4:4: every component at 1 x 1
        {"subsampling": 1},  # 4:2:2
        {"restart_marker_rows": 2},  # RST markers inside the scans
    ],
    ids=["420", "444", "422", "restart-markers"],
)
def test_the_eighth_scale_image_is_the_same_from_fewer_scans(options):
    data = _jpeg(_photo(), **options)
    reduced = eighth_scale_scans(data)
    assert len(reduced) < 0.7 * len(data)
    np.testing.assert_array_equal(_at_eighth(reduced), _at_eighth(data))


def test_leaving_every_full_resolution_ac_scan_out_would_change_the_pixels():
    # the reason one low-band AC scan stays: without it libjpeg-turbo smooths the DC
    from multigrain.data import progressive

    data = _jpeg(_photo(seed=1), subsampling=0)
    kept = eighth_scale_scans(data)
    original = progressive._SMOOTHING_BAND
    try:
        progressive._SMOOTHING_BAND = 0  # keep no AC scan of a 1 x 1 component
        none_kept = eighth_scale_scans(data)
    finally:
        progressive._SMOOTHING_BAND = original
    assert len(none_kept) < len(kept)
    assert not np.array_equal(_at_eighth(none_kept), _at_eighth(data))


def test_decode_image_reads_fewer_scans_only_where_it_changes_nothing(tmp_path):
    image = _photo(seed=2)
    progressive_file, baseline_file = tmp_path / "p.jpg", tmp_path / "b.jpg"
    progressive_file.write_bytes(_jpeg(image))
    image.save(baseline_file, quality=92)
    for longest_side in (120, 160, 300, 640, None):  # 1/8, 1/8, 1/4, 1/2, full size
        for path in (progressive_file, baseline_file):
            plain = Image.open(path)
            if longest_side is not None:
                plain.draft("RGB", (longest_side, 1))
            np.testing.assert_array_equal(
                np.asarray(decode_image(path, longest_side=longest_side)),
                np.asarray(plain.convert("RGB")),
            )


def test_files_it_cannot_sort_out_are_left_whole(tmp_path):
    image = _photo(320, 240)
    baseline = io.BytesIO()
    image.save(baseline, format="JPEG", quality=90)
    with pytest.raises(NotProgressive, match="not progressive"):
        eighth_scale_scans(baseline.getvalue())
    with pytest.raises(NotProgressive, match="start-of-image"):
        eighth_scale_scans(b"\x89PNG\r\n\x1a\n")
    data = _jpeg(image)
    with pytest.raises(NotProgressive, match="truncated"):
        eighth_scale_scans(data[: len(data) // 2])
    # a truncated progressive file is reported by decode_image as before, naming it
    broken = tmp_path / "half.jpg"
    broken.write_bytes(data[: len(data) // 2])
    from multigrain.data.images import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="half.jpg"):
        decode_image(broken, longest_side=32)


def test_the_benchmark_times_both_paths_and_checks_they_agree(tmp_path):
    import json

    import decode_progressive

    _photo(2400, 1600).save(tmp_path / "camera.jpg", quality=90, progressive=True)  # 3.8 MP
    _photo(2400, 1600, seed=3).save(tmp_path / "baseline.jpg", quality=90)  # not timed
    output = tmp_path / "out.json"
    status = decode_progressive.main(
        ["--resolutions", "224,500", "--rounds", "1", "--camera-roots", str(tmp_path),
         "--output", str(output)]
    )  # fmt: skip
    assert status == 0
    report = json.loads(output.read_text())
    assert report["machine"]["cpu_model"] and report["libjpeg_turbo"]
    at_224, at_500 = report["results"]
    assert (at_224["files"], at_224["files_at_eighth_scale"], at_224["identical"]) == (1, 1, 1)
    assert at_500["files_at_eighth_scale"] == 0  # 2400 / 500 < 8: decoded at 1/4, whole
    assert at_224["whole_ms_sum"] > 0 and at_224["decode_image_ms_sum"] > 0


def test_the_exif_orientation_survives_the_fewer_scans(tmp_path):
    from PIL import ImageOps

    image = _photo(seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg(image, exif=exif.tobytes()))
    plain = Image.open(path)
    plain.draft("RGB", (120, 1))
    expected = ImageOps.exif_transpose(plain.convert("RGB"))
    decoded = decode_image(path, longest_side=120)
    assert decoded.size == expected.size == (120, 160)  # portrait once upright
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(expected))
