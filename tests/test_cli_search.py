"""index build / add / remove, search and dedup from the command line, on real image files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, make_pattern

from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        (root / name).mkdir()
        for index in range(6):
            make_pattern(rng, index % 3, 48).save(root / name / f"{index}.png")
    # two planted duplicates of a/0.png: an exact copy and a re-encoded JPEG
    shutil.copy(root / "a" / "0.png", root / "b" / "copy.png")
    from PIL import Image

    Image.open(root / "a" / "0.png").save(root / "b" / "copy.jpg", quality=92)
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3)
    save_checkpoint(
        root / "model.pt", {"model_state": model.state_dict(), "architecture": model.architecture()}
    )
    cli("embed", str(root / "a"), "-c", str(root / "model.pt"), "-o", str(root / "ea"), "-s", "48")
    cli("embed", str(root / "b"), "-c", str(root / "model.pt"), "-o", str(root / "eb"), "-s", "48")
    return root


def test_build_add_search_remove(collection, tmp_path):
    index = tmp_path / "index"
    cli("index", "build", str(collection / "ea"), "-o", str(index))
    cli("index", "add", str(index), str(collection / "eb"))
    found = cli("search", str(index), str(collection / "ea"), "-k", "3", "--json")
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert len(rows) == 6
    for row in rows:  # every indexed image finds itself at the top (a/0.png ties with its copy)
        top = [r["path"] for r in row["results"] if r["score"] > 1 - 1e-4]
        assert row["query"] in top
        assert row["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    first = next(r for r in rows if r["query"].endswith("a/0.png"))
    assert {Path(r["path"]).name for r in first["results"]} == {"0.png", "copy.png", "copy.jpg"}
    # image queries embedded with the checkpoint at the index's s and p
    by_image = cli("search", str(index), str(collection / "b"), "-c",
                   str(collection / "model.pt"), "-k", "1", "--json")  # fmt: skip
    for line in by_image.stdout.splitlines():
        row = json.loads(line)
        if not row["query"].endswith(("copy.png", "a/0.png")):  # exact copies tie
            assert row["results"][0]["path"] == row["query"]
    removed = str(collection / "b" / "copy.png")
    cli("index", "remove", str(index), removed)
    after = cli("search", str(index), str(collection / "ea"), "-k", "5", "--json")
    assert removed not in after.stdout


def test_a_rabitq_index_from_the_command_line(collection, tmp_path):
    """A factory with no float copy, built, searched with --nprobe, and --nprobe refused
    where it means nothing (Flat, the default at this size)."""
    index = tmp_path / "rabitq"
    built = cli("index", "build", str(collection / "ea"), "-o", str(index),
                "--factory", "IVF2,RaBitQ6")  # fmt: skip
    assert "IVF2,RaBitQ6" in built.stdout
    version = next(index.glob("v-*"))
    assert not (version / "descriptors.npy").exists()  # no float copy on disk either
    found = cli("search", str(index), str(collection / "ea"), "-k", "1", "--nprobe", "2",
                "--json")  # fmt: skip
    for line in found.stdout.splitlines():  # both lists visited: each image finds itself
        row = json.loads(line)
        assert row["results"][0]["path"] == row["query"]
    flat = tmp_path / "flat"
    assert "(Flat," in cli("index", "build", str(collection / "ea"), "-o", str(flat)).stdout
    refused = cli("search", str(flat), str(collection / "ea"), "--nprobe", "2", expect=2)
    assert "nprobe does not apply to a Flat index" in refused.stderr


def test_dedup_finds_the_planted_copies(collection, tmp_path):
    both = tmp_path / "all"
    cli("embed", str(collection), "-c", str(collection / "model.pt"), "-o", str(both), "-s", "48")
    cli("dedup", str(both), "--threshold", "0.997", "-o", str(tmp_path / "groups.json"),
        "--html", str(tmp_path / "sheet.html"))  # fmt: skip
    # a random network maps everything close together: measured here, the JPEG copy is at
    # 0.9986 and the closest unrelated pair at 0.9940
    groups = json.loads((tmp_path / "groups.json").read_text())["groups"]
    names = [sorted(Path(p).name for p in group) for group in groups]
    assert ["0.png", "copy.jpg", "copy.png"] in names
    assert "copy.jpg" in (tmp_path / "sheet.html").read_text()


def test_foreign_index_is_refused(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "CURRENT").write_text("nothing\n")
    result = cli("index", "add", str(tmp_path / "bad"), str(tmp_path), expect=2)
    assert "Traceback" not in result.stderr and "error:" in result.stderr


def test_relative_index_paths(collection, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli("index", "build", str(collection / "ea"), "-o", "relative.index")
    found = cli("search", "relative.index", str(collection / "ea"), "-k", "1", "--json")
    assert len(found.stdout.splitlines()) == 6


def test_threshold_and_background_normalisation(collection, tmp_path):
    index = tmp_path / "index"
    cli("index", "build", str(collection / "ea"), "-o", str(index))
    strict = cli("search", str(index), str(collection / "ea"), "-k", "6", "--json",
                 "--threshold", "0.9999")  # fmt: skip
    for line in strict.stdout.splitlines():
        row = json.loads(line)
        assert [hit["path"] for hit in row["results"]] == [row["query"]]
        assert row["threshold"] == 0.9999 and row["results"][0]["match"] is True
    # --all keeps the k results, flagging those under the threshold
    every = cli("search", str(index), str(collection / "ea"), "-k", "3", "--json", "--all",
                "--threshold", "0.9999")  # fmt: skip
    for line in every.stdout.splitlines():
        row = json.loads(line)
        flags = [(hit["path"] == row["query"], hit["match"]) for hit in row["results"]]
        assert len(flags) == 3 and all(own == match for own, match in flags)
    text = cli("search", str(index), str(collection / "ea"), "-k", "2", "--all",
               "--threshold", "0.9999").stdout  # fmt: skip
    assert text.count("MATCH") == len(strict.stdout.splitlines())  # one per query: itself
    # the queries themselves as background: each query's nearest background image is
    # itself (similarity 1), so its own score becomes 1 - 1 = 0 and the others go negative
    normalised = cli("search", str(index), str(collection / "ea"), "-k", "6", "--json",
                     "--background", str(collection / "ea"))  # fmt: skip
    for line in normalised.stdout.splitlines():
        scores = [hit["score"] for hit in json.loads(line)["results"]]
        assert scores[0] == pytest.approx(0.0, abs=1e-4)
        assert all(score < 1e-4 for score in scores)
