"""Benchmark readers on tiny hand-built copies of each dataset's real layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from multigrain.data.standard import (
    READERS,
    BenchmarkName,
    load_safe_pickle,
    read_copydays,
    read_disc21,
    read_holidays,
    read_imagenet_val,
    read_revisitop,
    read_ukbench,
)
from multigrain.data.standard.holidays import read_rotations, shipped_rotations_file
from multigrain.data.standard.revisitop import Difficulty
from multigrain.runtime.errors import MultiGrainError


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path)
    return path


def _sets(arrays: list[np.ndarray]) -> list[set[int]]:
    return [set(a.tolist()) for a in arrays]


# --- Holidays ---------------------------------------------------------------------------

HOLIDAYS_NAMES = ["100000", "100001", "100002", "100100", "100101", "100200", "100201"]


@pytest.fixture
def holidays_root(tmp_path: Path) -> Path:
    for name in reversed(HOLIDAYS_NAMES):
        _image(tmp_path / "jpg" / f"{name}.jpg")
    return tmp_path


def test_holidays_groups_queries_and_excluded_query(holidays_root: Path) -> None:
    bench = read_holidays(holidays_root, upright=False)
    assert [p.stem for p in bench.database] == HOLIDAYS_NAMES
    assert [p.stem for p in bench.queries] == ["100000", "100100", "100200"]
    assert _sets(bench.positives) == [{1, 2}, {4}, {6}]
    assert bench.query_in_database == [0, 3, 5]
    assert _sets(bench.junk) == [{0}, {3}, {5}]  # the query is excluded from its own results
    assert bench.rotations is None and bench.protocol == "holidays"
    assert "3 queries" in bench.describe()


def test_holidays_images_directly_in_root(tmp_path: Path) -> None:
    for name in HOLIDAYS_NAMES:
        _image(tmp_path / f"{name}.jpg")
    assert len(read_holidays(tmp_path).queries) == 3


def test_holidays_shipped_rotation_list(holidays_root: Path) -> None:
    rotations = read_rotations(shipped_rotations_file())
    assert len(rotations) == 228
    assert set(rotations.values()) == {90, 180, 270}
    assert rotations["100600.jpg"] == 90 and rotations["139302.jpg"] == 180
    bench = read_holidays(holidays_root, upright=True)
    assert bench.protocol == "holidays-upright"
    assert not read_holidays(holidays_root, upright=False).rotations


def test_holidays_rotations_file_gives_upright_protocol(holidays_root: Path) -> None:
    rotations = holidays_root / "rot.txt"
    rotations.write_text('# comment\n100001.jpg 90\n"100100.jpg": 270,\n100200.jpg 0\n')
    bench = read_holidays(holidays_root, rotations_file=rotations)
    assert bench.protocol == "holidays-upright"
    assert bench.rotations == {"100001.jpg": 90, "100100.jpg": 270}
    assert read_holidays(holidays_root, upright=False, rotations_file=rotations).rotations is None


def test_holidays_bad_rotation_is_refused(holidays_root: Path) -> None:
    rotations = holidays_root / "rot.txt"
    rotations.write_text("100001.jpg 45\n")
    with pytest.raises(MultiGrainError, match="multiple of 90"):
        read_holidays(holidays_root, rotations_file=rotations)


def test_holidays_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MultiGrainError, match=r"missing.*root/jpg/NNNNNN\.jpg"):
        read_holidays(tmp_path / "missing")
    _image(tmp_path / "jpg" / "holiday_1.jpg")
    with pytest.raises(MultiGrainError, match="holiday_1.jpg.*six-digit"):
        read_holidays(tmp_path)


# --- Copydays ---------------------------------------------------------------------------


@pytest.fixture
def copydays_root(tmp_path: Path) -> Path:
    for name in ["200000", "200100", "200200"]:
        _image(tmp_path / "original" / f"{name}.jpg")
    for name in ["200001", "200002", "200201"]:
        _image(tmp_path / "strong" / f"{name}.jpg")
    return tmp_path


def test_copydays_strong_queries_match_their_original(copydays_root: Path) -> None:
    distractors = copydays_root / "flickr"
    _image(distractors / "a" / "d1.jpg")
    _image(distractors / "d0.jpg")
    bench = read_copydays(copydays_root, distractors=distractors)  # sorted by path: a/d1 < d0
    assert [p.stem for p in bench.database] == ["200000", "200100", "200200", "d1", "d0"]
    assert [p.stem for p in bench.queries] == ["200001", "200002", "200201"]
    assert _sets(bench.positives) == [{0}, {0}, {2}]
    assert all(j.size == 0 for j in bench.junk)
    assert bench.protocol == "copydays-strong"


def test_copydays_originals_in_root_and_csv_mapping(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    _image(tmp_path / "strong" / "x.jpg")
    _image(tmp_path / "strong" / "y.jpg")
    (tmp_path / "strong.csv").write_text("query,original\nx.jpg,b.jpg\ny.jpg,a.jpg\n")
    bench = read_copydays(tmp_path)
    assert _sets(bench.positives) == [{1}, {0}]


def test_copydays_errors_name_the_problem(copydays_root: Path, tmp_path: Path) -> None:
    _image(copydays_root / "strong" / "209901.jpg")
    with pytest.raises(MultiGrainError, match="209901.jpg has no original numbered 20990"):
        read_copydays(copydays_root)
    lonely = tmp_path / "lonely"
    _image(lonely / "original" / "200000.jpg")
    with pytest.raises(MultiGrainError, match=r"strong.*not found.*root/strong/"):
        read_copydays(lonely)


# --- UKBench ----------------------------------------------------------------------------


def test_ukbench_every_image_is_a_query_with_its_group(tmp_path: Path) -> None:
    for i in range(8):
        _image(tmp_path / "full" / f"ukbench{i:05d}.jpg")
    bench = read_ukbench(tmp_path)
    assert len(bench.queries) == len(bench.database) == 8
    assert _sets(bench.positives) == [{0, 1, 2, 3}] * 4 + [{4, 5, 6, 7}] * 4
    assert bench.query_in_database == list(range(8))
    assert bench.protocol == "ukbench"


def test_ukbench_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MultiGrainError, match="no ukbench"):
        read_ukbench(tmp_path)
    for i in [0, 1, 2, 3, 4, 5, 7]:
        _image(tmp_path / f"ukbench{i:05d}.jpg")
    with pytest.raises(MultiGrainError, match="ukbench00006.jpg"):
        read_ukbench(tmp_path)
    _image(tmp_path / "photo.jpg")
    with pytest.raises(MultiGrainError, match="photo.jpg"):
        read_ukbench(tmp_path)


# --- Revisited Oxford / Paris -----------------------------------------------------------


@pytest.fixture
def roxford_root(tmp_path: Path) -> Path:
    folder = tmp_path / "roxford5k"
    imlist = [f"db_{i}" for i in range(6)]
    qimlist = ["q_0", "q_1"]
    for name in imlist + qimlist:
        _image(folder / "jpg" / f"{name}.jpg")
    gnd = [
        {
            "bbx": np.array([1.5, 2.0, 7.0, 8.0]),
            "easy": np.array([0, 1]),
            "hard": np.array([2]),
            "junk": np.array([3]),
        },
        {"bbx": [0, 0, 4, 4], "easy": [4], "hard": [], "junk": [5]},
    ]
    with (folder / "gnd_roxford5k.pkl").open("wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
    return tmp_path


@pytest.mark.parametrize(
    ("difficulty", "positives", "junk"),
    [
        ("easy", [{0, 1}, {4}], [{3, 2}, {5}]),
        ("medium", [{0, 1, 2}, {4}], [{3}, {5}]),
        ("hard", [{2}, set()], [{3, 0, 1}, {5, 4}]),
    ],
)
def test_revisitop_difficulty_rules(
    roxford_root: Path, difficulty: Difficulty, positives: list[set[int]], junk: list[set[int]]
) -> None:
    bench = read_revisitop(roxford_root, "roxford5k", difficulty=difficulty)
    assert _sets(bench.positives) == positives
    assert _sets(bench.junk) == junk
    assert bench.protocol == f"revisitop-{difficulty}"
    assert bench.query_boxes == [(1.5, 2.0, 7.0, 8.0), (0.0, 0.0, 4.0, 4.0)]
    assert [p.name for p in bench.queries] == ["q_0.jpg", "q_1.jpg"]
    assert len(bench.database) == 6


def test_revisitop_errors_name_the_problem(roxford_root: Path) -> None:
    with pytest.raises(MultiGrainError, match=r"rparis6k.*root/rparis6k/gnd_rparis6k\.pkl"):
        read_revisitop(roxford_root, "rparis6k", difficulty="medium")
    (roxford_root / "roxford5k" / "jpg" / "db_5.jpg").unlink()
    with pytest.raises(MultiGrainError, match="db_5.jpg"):
        read_revisitop(roxford_root, "roxford5k", difficulty="medium")
    (roxford_root / "roxford5k" / "gnd_roxford5k.pkl").unlink()
    with pytest.raises(MultiGrainError, match=r"gnd_roxford5k\.pkl not found"):
        read_revisitop(roxford_root, "roxford5k", difficulty="medium")
    unknown: Any = "extreme"
    with pytest.raises(MultiGrainError, match="difficulty"):
        read_revisitop(roxford_root, "roxford5k", difficulty=unknown)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_safe_pickle_refuses_arbitrary_callables(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"gnd": [_Exploit()]}))
    with pytest.raises(MultiGrainError, match=r"refusing to load (posix|nt|os)\.system"):
        load_safe_pickle(path)


def test_safe_pickle_reads_arrays_and_scalars(tmp_path: Path) -> None:
    path = tmp_path / "ok.pkl"
    data = {"a": np.arange(3), "b": np.float64(2.5), "c": [np.array([[1.0]])]}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        loaded = load_safe_pickle(path)
        np.testing.assert_array_equal(loaded["a"], data["a"])
        assert loaded["b"] == 2.5


def test_safe_pickle_reads_numpy1_names(tmp_path: Path) -> None:
    # Protocol 2 names globals as text, so this mimics a pickle written under numpy 1.
    raw = pickle.dumps({"easy": np.array([4, 5])}, protocol=2)
    path = tmp_path / "old.pkl"
    path.write_bytes(raw.replace(b"numpy._core", b"numpy.core"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    assert load_safe_pickle(path)["easy"].tolist() == [4, 5]


# --- DISC21 -----------------------------------------------------------------------------


@pytest.fixture
def disc21_root(tmp_path: Path) -> Path:
    for name in ["Q00000", "Q00001", "Q00002"]:
        _image(tmp_path / "queries" / f"{name}.jpg")
    for name in ["R000000", "R000001"]:
        _image(tmp_path / "references" / f"{name}.jpg")
    _image(tmp_path / "training" / "T000000.jpg")
    (tmp_path / "dev_groundtruth.csv").write_text(
        "query_id,reference_id\nQ00000,R000001\nQ00001,\nQ00002,R000000\n"
    )
    return tmp_path


def test_disc21_pairs_and_query_without_match(disc21_root: Path) -> None:
    bench = read_disc21(disc21_root)
    assert len(bench.queries) == 3 and len(bench.references) == 2
    assert bench.ground_truth == [(0, 1), (2, 0)]
    assert [p.name for p in bench.background] == ["T000000.jpg"]
    assert "2 with a copy" in bench.describe()


def test_disc21_errors_name_the_problem(disc21_root: Path) -> None:
    (disc21_root / "dev_groundtruth.csv").write_text("query_id,reference_id\nQ00000,R999999\n")
    with pytest.raises(MultiGrainError, match="R999999"):
        read_disc21(disc21_root)
    (disc21_root / "dev_groundtruth.csv").unlink()
    with pytest.raises(MultiGrainError, match=r"groundtruth.*query_id,reference_id"):
        read_disc21(disc21_root)
    no_references = disc21_root / "copy"
    _image(no_references / "queries" / "Q00000.jpg")
    with pytest.raises(MultiGrainError, match=r"references: folder .*copy/references not found"):
        read_disc21(no_references)


# --- ImageNet ---------------------------------------------------------------------------


def test_imagenet_image_folder(tmp_path: Path) -> None:
    _image(tmp_path / "n02" / "b.JPEG")
    _image(tmp_path / "n01" / "a.JPEG")
    _image(tmp_path / "n01" / "c.JPEG")
    bench = read_imagenet_val(tmp_path)
    assert bench.classes == ["n01", "n02"]
    assert [p.name for p in bench.images] == ["a.JPEG", "c.JPEG", "b.JPEG"]
    assert bench.labels.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("lines", "classes", "expected_labels", "expected_classes"),
    [
        ("x.JPEG 2\ny.JPEG 0\n", ["c0", "c1", "c2"], [2, 0], ["c0", "c1", "c2"]),
        ("x.JPEG n02\ny.JPEG n01\n", None, [1, 0], ["n01", "n02"]),
    ],
)
def test_imagenet_flat_folder_with_label_file(
    tmp_path: Path,
    lines: str,
    classes: list[str] | None,
    expected_labels: list[int],
    expected_classes: list[str],
) -> None:
    _image(tmp_path / "x.JPEG")
    _image(tmp_path / "y.JPEG")
    (tmp_path / "labels.txt").write_text(lines)
    bench = read_imagenet_val(tmp_path, classes=classes)
    assert bench.labels.tolist() == expected_labels
    assert bench.classes == expected_classes


def test_imagenet_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MultiGrainError, match="no class folders and no labels.txt"):
        read_imagenet_val(tmp_path)
    (tmp_path / "labels.txt").write_text("missing.JPEG 0\n")
    with pytest.raises(MultiGrainError, match="missing.JPEG"):
        read_imagenet_val(tmp_path)


# --- Registry ---------------------------------------------------------------------------


def test_registry_covers_every_benchmark(roxford_root: Path) -> None:
    assert set(READERS) == set(BenchmarkName)
    bench = READERS[BenchmarkName("roxford5k")](roxford_root, difficulty="hard")
    assert bench.name == "roxford5k"
