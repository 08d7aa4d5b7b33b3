"""find-duplicates: exact groups, the keep rule, the self-calibrated threshold, and the whole
command on real photos from a package the shipped model never trained on."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from multigrain.duplicates.calibration import CalibrationSample, folder_threshold, sample_links
from multigrain.duplicates.exact import exact_groups
from multigrain.duplicates.keep import file_facts, rank_for_keeping
from multigrain.duplicates.synthetic import synthetic_copies
from multigrain.search.neighbourhood import collection_neighbourhoods, query_neighbourhoods
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


def _toy_collection(count: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((96, 96))
        for _ in range(count)
    ]
    return images, _describe(images)


def _describe(batch: list[Image.Image]) -> np.ndarray:
    """A toy descriptor: the image's mean colour on a 4x4 grid, centred and unit-length."""
    rows = [np.asarray(im.convert("RGB").resize((4, 4)), dtype=np.float32).ravel() - 128
            for im in batch]  # fmt: skip
    stacked = np.stack(rows)
    return stacked / np.linalg.norm(stacked, axis=1, keepdims=True)


def test_calibration_counts_right_and_wrong_links() -> None:
    """Copies of random-colour images score high with their source under the toy
    descriptor; every copy and every sampled original is one query."""
    images, collection = _toy_collection(40, seed=1)
    hood = collection_neighbourhoods(collection)
    sample = sample_links(
        collection, lambda row: images[row], _describe, longest_side=96, neighbourhoods=hood,
        num_sources=20, seed=0,
    )  # fmt: skip
    assert sample.num_sources == 20 and sample.copies_per_source == 8
    assert sample.num_queries == 20 * (8 + 1) and sample.right.shape == (160,)
    assert np.median(sample.right) > np.quantile(sample.wrong, 0.99)


def test_folder_threshold_counts_false_links_at_the_folder_rate() -> None:
    """By hand: 1,000 queries with 2 wrong links at 0.5 and 5,000 at 0.1; in a folder of 200
    images a link at >= 0.5 is false 200 / 2 * 2 / 1000 = 0.2 times (>= 0.1: 500 times)."""
    wrong = np.concatenate([np.full(2, 0.5), np.full(5000, 0.1)])
    sample = CalibrationSample(
        right=np.linspace(0, 1, 101), wrong=wrong, num_queries=1000, num_sources=100,
        copies_per_source=9,
    )  # fmt: skip
    folder = np.array([0.9, 0.8, 0.7, 0.5, 0.1])
    # the step from 0.7 to 0.5 adds one link, 0.8 true: enough for 0.75, not for 0.9
    loose = folder_threshold(sample, folder, collection_size=200, target_precision=0.75)
    assert loose.threshold == 0.5 and loose.reached_target and loose.folder_links == 4
    assert loose.expected_false_links == pytest.approx(0.2)
    assert loose.estimated_precision == pytest.approx(0.95)
    assert loose.precision_lower_bound < loose.estimated_precision
    assert loose.estimated_recall == pytest.approx(51 / 101, abs=1e-4)
    strict = folder_threshold(sample, folder, collection_size=200, target_precision=0.9)
    assert strict.threshold == 0.7 and strict.expected_false_links == 0.0
    assert strict.folder_links == 3 and strict.estimated_precision == 1.0
    # every link explained by false ones: the best estimate, flagged
    worst = folder_threshold(sample, np.array([0.1, 0.1]), collection_size=2000,
                             target_precision=0.9)  # fmt: skip
    assert not worst.reached_target and worst.threshold == 0.1


def test_neighbourhood_scores_leave_the_pair_out() -> None:
    """Brute force on random unit vectors: mu_i\\j is the mean of i's k best other scores."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hood = collection_neighbourhoods(x, neighbours=4)
    cos = x @ x.T
    for i, j in [(0, 1), (3, 7), (5, int(np.argsort(-cos[5])[1]))]:

        def mu(a: int, b: int) -> float:
            others = np.delete(cos[a], [a, b])
            return float(np.sort(others)[::-1][:4].mean())

        expected = cos[i, j] - (mu(i, j) + mu(j, i)) / 2
        got = hood.normalised(np.array([i]), np.array([j]), np.array([cos[i, j]]))[0]
        assert got == pytest.approx(expected, abs=1e-5)
    # a query outside the collection: its own k best include every collection row
    q = x[:1] * 0.9 + x[1:2] * 0.1
    q /= np.linalg.norm(q)
    outside = query_neighbourhoods(q, x, neighbours=4)
    assert outside.best.shape == (1, 5)
    assert np.allclose(outside.best[0], np.sort(x @ q[0])[::-1][:5], atol=1e-5)


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
        elif number == 5:  # a 70 % crop: the descriptors alone leave it apart
            w, h = image.size
            image.crop((w // 10, h // 5, w // 10 + 7 * w // 10, h // 5 + 7 * h // 10)).save(
                folder / "zz-crop70.jpg", quality=85
            )
            truth.append({name, "zz-crop70.jpg"})
        elif number == 6:  # a caption bar over the bottom sixth
            captioned = image.copy()
            draw = ImageDraw.Draw(captioned)
            draw.rectangle((0, captioned.height * 5 // 6, captioned.width, captioned.height), 0)
            draw.text((12, captioned.height * 5 // 6 + 10), "summer 2026", fill=(255, 255, 0))
            captioned.save(folder / "zz-caption.jpg", quality=85)
            truth.append({name, "zz-caption.jpg"})
        elif number == 7:  # rotated 7 degrees, the corners cropped away
            w, h = image.size
            turned = image.rotate(7, resample=Image.Resampling.BILINEAR)
            turned.crop((w // 8, h // 8, w - w // 8, h - h // 8)).save(folder / "zz-rotated.jpg")
            truth.append({name, "zz-rotated.jpg"})
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
    assert report["calibration"]["reached_target"] and report["score"] == "neighbourhood"
    assert -2 <= report["threshold"] <= 2
    # the crop, the caption and the rotation are linked by matching points
    assert report["min_inliers"] >= 15 and report["verification"]["recall"] > 0.3
    linked_by_points = {
        frozenset((Path(p["a"]).name, Path(p["b"]).name))
        for g in report["groups"]
        for p in g["pairs"]
        if p["linked"] and p["inliers"] is not None and p["inliers"] >= report["min_inliers"]
    }
    for copy in ("zz-crop70.jpg", "zz-caption.jpg", "zz-rotated.jpg"):
        assert any(copy in pair for pair in linked_by_points), copy
    assert (out / "contact-sheet.html").read_text().count("<section>") == len(truth)
    assert len((out / "groups.csv").read_text().splitlines()) == 1 + 2 * len(truth)
    # a rerun reuses the cached descriptors: nothing is embedded again
    again = cli("find-duplicates", str(folder), "-o", str(out))
    assert json.loads((out / "groups.json").read_text())["groups"] == report["groups"]
    assert again.returncode == 0
    # a photo deleted since (the user acted on the groups): the cache is rebuilt, not refused
    (folder / "zz-q30.jpg").unlink()
    after = cli("find-duplicates", str(folder), "-o", str(out))
    assert after.returncode == 0
    left = json.loads((out / "groups.json").read_text())["groups"]
    assert len(left) == len(truth) - 1
    assert all("zz-q30.jpg" not in json.dumps(group) for group in left)


def test_a_cache_of_other_settings_is_replaced_not_refused(tmp_path: Path) -> None:
    """After an upgrade (another model or whitening) find-duplicates embeds again."""
    from multigrain.duplicates.folder import _drop_stale_cache
    from multigrain.inference.store import SHARD_FOLDER, shard_name, write_shard
    from multigrain.search.descriptors import EmbeddingMetadata

    photos = [tmp_path / f"{i}.png" for i in range(2)]
    old = EmbeddingMetadata("m@sha256:1", 160, 4.0, True, 256, "bf16", whitening="sha256:a")
    new = EmbeddingMetadata("m@sha256:1", 160, 4.0, True, 257, "bf16", whitening="sha256:b")
    cache = tmp_path / "cache"
    (cache / SHARD_FOLDER).mkdir(parents=True)
    shard = cache / SHARD_FOLDER / shard_name(0, 0)
    write_shard(shard, np.zeros((2, 256), np.float32), [str(p) for p in photos], old)
    _drop_stale_cache(cache, old, photos)  # same settings, same images: kept
    assert shard.is_file()
    _drop_stale_cache(cache, new, photos)
    assert not cache.exists()


def test_cli_score_choices_match_the_library() -> None:
    from multigrain.cli.duplicates import LinkScore
    from multigrain.duplicates.folder import ScoreKind

    assert [kind.value for kind in LinkScore] == [kind.value for kind in ScoreKind]
