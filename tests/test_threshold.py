"""calibrate-threshold on seeded synthetic descriptors, checked by brute force, then reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import multigrain.cli.search  # noqa: F401  (registers the commands)
import multigrain.cli.threshold  # noqa: F401
from multigrain.cli.app import app
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.threshold import load_threshold, read_ground_truth

DIM = 32
NUM_REFERENCES = 300
NUM_COPIES = 120  # queries Q00000..Q00119 are copies of R000000..R000119
NUM_QUERIES = 200  # the others have no copy
K = 10


def invoke(*args: str) -> tuple[str, str]:
    """Run a command in-process; MultiGrainError propagates as in `multigrain`'s main()."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write_embeddings(folder: Path, descriptors: np.ndarray, paths: list[str]) -> Path:
    """A finished `multigrain embed` output folder."""
    folder.mkdir(parents=True)
    np.save(folder / "descriptors.npy", descriptors)
    (folder / "paths.txt").write_text("\n".join(paths) + "\n", encoding="utf-8")
    metadata = {"model": "synthetic", "resolution": 64, "exponent": 3.0, "whitened": False,
                "dim": DIM, "precision": "fp32", "count": len(paths)}  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An index of references, labelled queries (copies at graded noise, and non-copies
    partly mixed with a reference), a DISC21 ground-truth CSV and a background set."""
    root = tmp_path_factory.mktemp("threshold")
    rng = np.random.default_rng(0)
    references = _unit(rng.standard_normal((NUM_REFERENCES, DIM)))
    noise = np.linspace(0.2, 2.0, NUM_COPIES)[:, None]  # weak copies score like near misses
    copies = _unit(references[:NUM_COPIES] + noise * rng.standard_normal((NUM_COPIES, DIM)) / 6)
    mixed = 0.6 * references[NUM_COPIES + rng.integers(0, 50, NUM_QUERIES - NUM_COPIES)]
    others = _unit(mixed + rng.standard_normal((NUM_QUERIES - NUM_COPIES, DIM)) / 6)
    queries = np.concatenate([copies, others])
    reference_names = [f"/photos/references/R{i:06d}.jpg" for i in range(NUM_REFERENCES)]
    query_names = [f"/photos/queries/Q{i:05d}.jpg" for i in range(NUM_QUERIES)]
    lines = ["query_id,reference_id"]
    lines += [f"Q{i:05d},R{i:06d}" if i < NUM_COPIES else f"Q{i:05d}," for i in range(NUM_QUERIES)]
    (root / "ground_truth.csv").write_text("\n".join(lines) + "\n")
    _write_embeddings(root / "references", references, reference_names)
    _write_embeddings(root / "queries", queries, query_names)
    background = _unit(rng.standard_normal((400, DIM)))
    _write_embeddings(root / "background", background, [f"/bg/{i}.jpg" for i in range(400)])
    return {"root": root, "queries": root / "queries", "csv": root / "ground_truth.csv",
            "references": root / "references", "background": root / "background"}  # fmt: skip


def _brute_force_pairs(data: dict[str, Path], bias: np.ndarray | None = None):
    """Every (query, top-K reference) pair: score and whether it is a ground-truth copy."""
    queries = np.load(data["queries"] / "descriptors.npy").astype(np.float64)
    references = np.load(data["references"] / "descriptors.npy").astype(np.float64)
    similarity = queries @ references.T
    top = np.argsort(-similarity, axis=1)[:, :K]
    scores = np.take_along_axis(similarity, top, axis=1)
    if bias is not None:
        scores = scores - bias[:, None]
    positive = (top == np.arange(NUM_QUERIES)[:, None]) & (np.arange(NUM_QUERIES) < NUM_COPIES)[
        :, None
    ]
    return scores.ravel(), positive.ravel()


def _precision_recall(scores: np.ndarray, positive: np.ndarray, threshold: float):
    accepted = scores >= threshold - 1e-6
    return positive[accepted].mean(), positive[accepted].sum() / NUM_COPIES


def test_calibrated_threshold_reaches_the_precision_and_search_uses_it(labelled, tmp_path):
    index = tmp_path / "index"
    invoke("index", "build", str(labelled["references"]), "-o", str(index))
    out, _ = invoke("calibrate-threshold", "--index", str(index), "--queries",
                    str(labelled["queries"]), "--ground-truth", str(labelled["csv"]),
                    "--precision", "0.9", "-k", str(K))  # fmt: skip
    stored = load_threshold(index)
    assert stored is not None and f"{stored.threshold:.4f}" in out
    assert stored.background is None and stored.num_pairs == NUM_QUERIES * K
    assert stored.target_precision == 0.9 and stored.num_ground_truth == NUM_COPIES
    scores, positive = _brute_force_pairs(labelled)
    precision, recall = _precision_recall(scores, positive, stored.threshold)
    assert precision >= 0.9 and precision == pytest.approx(stored.precision)
    assert recall == pytest.approx(stored.recall)
    assert 0.3 < recall < 1.0  # the set is hard enough that the threshold trades recall
    # no lower threshold among the scores would also reach 0.9 (it is the best recall)
    lower = np.unique(scores[scores < stored.threshold - 1e-6])
    assert all(_precision_recall(scores, positive, t)[0] < 0.9 for t in lower[-20:])

    found, note = invoke("search", str(index), str(labelled["queries"]), "-k", str(K), "--json")
    assert "using the threshold" in note and "threshold.json" in note
    hits = [hit for line in found.splitlines() for hit in json.loads(line)["results"]]
    assert len(hits) == np.count_nonzero(scores >= stored.threshold - 1e-5)
    assert min(hit["score"] for hit in hits) >= round(stored.threshold, 5) - 1e-5
    everything, _ = invoke("search", str(index), str(labelled["queries"]), "-k", str(K),
                           "--json", "--threshold", "-1")  # fmt: skip
    assert sum(len(json.loads(line)["results"]) for line in everything.splitlines()) == 2000

    # dedup can reuse a raw-score threshold
    dedup_out = tmp_path / "groups.json"
    _, note = invoke("dedup", str(labelled["references"]), "--calibration", str(index),
                     "-o", str(dedup_out))  # fmt: skip
    assert "using the threshold" in note and dedup_out.exists()


def test_normalised_calibration_is_reused_with_its_background(labelled, tmp_path):
    index = tmp_path / "index"
    invoke("index", "build", str(labelled["references"]), "-o", str(index))
    invoke("calibrate-threshold", "--index", str(index), "--queries", str(labelled["queries"]),
           "--ground-truth", str(labelled["csv"]), "--precision", "0.8",
           "--background", str(labelled["background"]), "--beta", "0.5",
           "--neighbours", "3")  # fmt: skip
    stored = load_threshold(index)
    assert stored is not None and stored.beta == 0.5 and stored.neighbours == 3
    assert stored.background == str(labelled["background"].resolve())
    queries = np.load(labelled["queries"] / "descriptors.npy")
    background = np.load(labelled["background"] / "descriptors.npy")
    bias = 0.5 * np.sort(queries @ background.T, axis=1)[:, -3:].mean(axis=1)
    scores, positive = _brute_force_pairs(labelled, bias)
    assert _precision_recall(scores, positive, stored.threshold)[0] >= 0.8
    # search without --background normalises with the recorded background and settings
    found, _ = invoke("search", str(index), str(labelled["queries"]), "-k", str(K), "--json")
    hits = [hit for line in found.splitlines() for hit in json.loads(line)["results"]]
    assert len(hits) == np.count_nonzero(scores >= stored.threshold - 1e-5)
    with pytest.raises(MultiGrainError, match="--beta 0.5"):
        invoke("search", str(index), str(labelled["queries"]), "--beta", "1")
    with pytest.raises(MultiGrainError, match="background-normalised"):
        invoke("dedup", str(labelled["references"]), "--calibration", str(index),
               "-o", str(tmp_path / "g.json"))  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("query,reference\nQ00000,R000000\n", "header 'query_id,reference_id'"),
        ("query_id,reference_id\n", "lists no query"),
        ("query_id,reference_id\nX1,R000000\n", "none of the 200 queries"),
        ("query_id,reference_id\nQ00000,R999999\n", "not in the index"),
    ],
)
def test_bad_ground_truth_is_one_clear_line(labelled, tmp_path, content, message):
    index = tmp_path / "index"
    invoke("index", "build", str(labelled["references"]), "-o", str(index))
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(content)
    with pytest.raises(MultiGrainError, match=message) as error:
        invoke("calibrate-threshold", "--index", str(index), "--queries",
               str(labelled["queries"]), "--ground-truth", str(csv_path))  # fmt: skip
    text = str(error.value)
    assert "\n" not in text and ("bad.csv" in text or str(index) in text)
    assert not (index / "threshold.json").exists()


def test_missing_ground_truth_file(tmp_path):
    with pytest.raises(MultiGrainError, match="not found") as error:
        read_ground_truth(tmp_path / "nope.csv")
    assert "nope.csv" in str(error.value)
