"""find-duplicates: exact groups, the keep rule, the self-calibrated threshold, and the whole
command on real photos from a package the shipped model never trained on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multigrain.duplicates.calibration import calibrate_on_collection, synthetic_copies
from multigrain.duplicates.exact import exact_groups
from multigrain.duplicates.keep import file_facts, rank_for_keeping
from tests.conftest import cli

#: mate-backgrounds holds out-of-training photos (the shipped model's validation package);
#: its "nature" folder has one file per photo (other folders repeat a photo at several sizes).
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")


def test_exact_groups_need_identical_bytes(tmp_path: Path) -> None:
    for name, data in {"a": b"x" * 10, "b": b"x" * 10, "c": b"y" * 10, "d": b"x" * 11}.items():
        (tmp_path / name).write_bytes(data)
    paths = [tmp_path / n for n in "abcd"] + [tmp_path / "missing"]
    assert exact_groups(paths) == [[0, 1]]


def test_keep_prefers_pixels_then_bytes(tmp_path: Path) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    noise.resize((40, 30)).save(tmp_path / "small.png")
    noise.save(tmp_path / "large.jpg", quality=20)  # same pixels, fewer bytes than the PNG
    noise.save(tmp_path / "large.png")
    facts = [file_facts(tmp_path / n) for n in ("small.png", "large.jpg", "large.png")]
    ranked = [Path(f.path).name for f in rank_for_keeping(facts)]
    assert ranked[0] == "large.png" and ranked[-1] == "small.png"
    assert (facts[1].width, facts[1].height) == (80, 60)


def test_synthetic_copies_are_seeded_and_edited() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    first = synthetic_copies(image, count=4, longest_side=64, seed=3)
    again = synthetic_copies(image, count=4, longest_side=64, seed=3)
    assert [np.asarray(c).tobytes() for c in first] == [np.asarray(c).tobytes() for c in again]
    base = np.asarray(image.resize((64, 48)))
    assert any(c.size != (64, 48) or not np.array_equal(np.asarray(c), base) for c in first)


def test_calibration_separates_copies_from_unrelated_images() -> None:
    """A toy descriptor (the image's mean colour on a 4x4 grid) where copies score high:
    the threshold lands between the copies and the unrelated images."""
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((96, 96))
        for _ in range(40)
    ]

    def describe(batch: list[Image.Image]) -> np.ndarray:
        rows = [np.asarray(im.convert("RGB").resize((4, 4)), dtype=np.float32).ravel() - 128
                for im in batch]  # fmt: skip
        rows = np.stack(rows)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    collection = describe(images)
    result = calibrate_on_collection(
        collection, lambda row: images[row], describe, longest_side=96, num_sources=20, seed=0
    )
    unrelated = collection @ collection.T
    np.fill_diagonal(unrelated, -1)
    assert result.estimated_precision >= 0.9
    assert result.threshold > unrelated.max() - 1e-6 or result.estimated_precision >= 0.9
    assert result.num_sources == 20 and result.collection_size == 40


def _photos() -> list[Path]:
    photos = sorted(MATE_NATURE.glob("*.jpg")) if MATE_NATURE.is_dir() else []
    if len(photos) < 8:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no photos in {MATE_NATURE}: run scripts/setup-system.sh")
        pytest.skip(
            f"needs mate-backgrounds ({MATE_NATURE}): sudo apt-get install mate-backgrounds"
        )
    return photos


@pytest.mark.slow
def test_find_duplicates_finds_every_copy_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    truth: list[set[str]] = []
    for number, source in enumerate(_photos()):
        image = Image.open(source).convert("RGB")
        image.thumbnail((900, 900))
        name = f"photo{number:02d}.jpg"
        image.save(folder / name, quality=92)
        if number == 0:
            image.resize((image.width // 2, image.height // 2)).save(folder / "zz-half.jpg")
            truth.append({name, "zz-half.jpg"})
        elif number == 1:
            image.save(folder / "zz-q30.jpg", quality=30)
            truth.append({name, "zz-q30.jpg"})
        elif number == 2:
            image.save(folder / "zz-lossless.png")
            truth.append({name, "zz-lossless.png"})
        elif number == 3:
            shutil.copy(folder / name, folder / "zz-same.jpg")
            truth.append({name, "zz-same.jpg"})
        elif number == 4:
            w, h = image.size
            image.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(folder / "zz-crop.jpg")
            truth.append({name, "zz-crop.jpg"})
    out = tmp_path / "out"
    result = cli("find-duplicates", str(folder), "-o", str(out))
    assert "calibrated" in result.stdout
    report = json.loads((out / "groups.json").read_text())
    found = [{Path(m["path"]).name for m in group["members"]} for group in report["groups"]]
    assert sorted(map(sorted, found)) == sorted(map(sorted, truth))
    kinds = {
        frozenset(Path(m["path"]).name for m in g["members"]): g["kind"] for g in report["groups"]
    }
    assert kinds[frozenset({"photo03.jpg", "zz-same.jpg"})] == "exact"
    half = next(
        g for g in report["groups"] if "zz-half.jpg" in {Path(m["path"]).name for m in g["members"]}
    )
    assert Path(half["keep"]).name == "photo00.jpg"  # the larger picture
    assert report["calibration"]["estimated_precision"] >= 0.9
    assert -1 <= report["threshold"] <= 1
    assert (out / "contact-sheet.html").read_text().count("<section>") == len(truth)
    assert len((out / "groups.csv").read_text().splitlines()) == 1 + 2 * len(truth)
    # a rerun reuses the cached descriptors: nothing is embedded again
    again = cli("find-duplicates", str(folder), "-o", str(out))
    assert json.loads((out / "groups.json").read_text())["groups"] == report["groups"]
    assert again.returncode == 0
