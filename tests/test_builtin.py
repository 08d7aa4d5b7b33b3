"""The built-in benchmark: build a small one and read it back with the standard readers."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multigrain.data.photos.packages import package_files
from multigrain.data.photos.pool import scan_pool
from multigrain.data.standard import read_disc21, read_ukbench
from multigrain.evaluation.builtin import augment, build_builtin_benchmark, phash_descriptors
from multigrain.runtime.errors import MultiGrainError

MAX_POOL = 40


def _require_packages() -> None:
    try:
        scan_pool()
    except MultiGrainError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    _require_packages()
    output = tmp_path_factory.mktemp("builtin") / "bench"
    return output, build_builtin_benchmark(output, seed=0, max_pool=MAX_POOL, progress=False)


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_missing_package_names_apt_get() -> None:
    with pytest.raises(MultiGrainError, match="apt-get install no-such-package-xyz"):
        package_files("no-such-package-xyz")


def test_manifest_sources_licences_and_counts(built) -> None:
    output, manifest = built
    saved = json.loads((output / "manifest.json").read_text())
    assert saved["counts"]["pool"] == MAX_POOL == len(saved["images"])
    assert sum(saved["per_package"].values()) == MAX_POOL
    assert set(saved["licences"]) == set(saved["per_package"])
    assert all(image["licence"] and image["package"] for image in saved["images"])
    counts = manifest.counts
    assert counts.train + counts.heldout == counts.pool
    assert counts.references == counts.heldout
    assert len(list((output / "copydetection" / "queries").glob("*.jpg"))) == counts.queries
    train_files = list((output / "train").rglob("*.jpg"))
    assert len(train_files) == counts.train_labelled
    classes = {p.name for p in (output / "train").iterdir()}
    assert {p.name for p in (output / "heldout_classes").iterdir()} <= classes


def test_split_is_disjoint_by_source(built) -> None:
    _, manifest = built
    train = {i.sha1 for i in manifest.images if i.part == "train"}
    heldout = {i.sha1 for i in manifest.images if i.part == "heldout"}
    assert train and heldout and not train & heldout


def test_readers_and_ground_truth(built) -> None:
    output, manifest = built
    copy = read_disc21(output / "copydetection")
    assert len(copy.queries) == manifest.counts.queries
    assert len(copy.references) == manifest.counts.references
    queries = [q for q, _ in copy.ground_truth]
    assert sorted(queries) == list(range(len(copy.queries)))  # exactly one reference each
    instances = read_ukbench(output / "instances")
    assert len(instances.database) == manifest.counts.instances > 0
    with (output / "copydetection" / "queries.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    seen = {(row["family"], row["strength"]) for row in rows}
    assert seen == {(f.value, s.value) for f in augment.Family for s in augment.Strength}


def test_pool_keys_do_not_depend_on_the_python_environment() -> None:
    """Keys order the pool: a key holding the virtualenv's path would make the benchmark
    depend on where the checkout lives (it did: scikit-image photos sorted before or after
    /usr/share depending on the venv's path)."""
    import sys

    from multigrain.data.photos.packages import SOURCES

    keys = [candidate.key for candidate in SOURCES["scikit-image"]()]
    assert keys and all(key.startswith("scikit-image:data/") for key in keys)
    assert not any(sys.prefix in key for key in keys)


def test_rebuild_is_byte_identical(built, tmp_path: Path) -> None:
    output, _ = built
    with pytest.raises(MultiGrainError, match="not empty"):
        build_builtin_benchmark(output, max_pool=MAX_POOL, progress=False)
    again = tmp_path / "again"
    build_builtin_benchmark(again, seed=0, max_pool=MAX_POOL, progress=False)
    for part in ("copydetection/queries", "copydetection/references", "instances"):
        names = sorted(p.name for p in (output / part).glob("*.jpg"))
        assert names == sorted(p.name for p in (again / part).glob("*.jpg"))
        for name in names[:: max(1, len(names) // 10)]:
            assert _sha1(output / part / name) == _sha1(again / part / name)
    assert _sha1(output / "copydetection/queries.csv") == _sha1(again / "copydetection/queries.csv")


def test_every_transform_runs() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8))
    for family in augment.Family:
        for strength in augment.Strength:
            out = augment.apply_transform(image, family, strength, np.random.default_rng(1))
            assert out.mode == "RGB" and min(out.size) >= 8


def _photo(tmp_path: Path, name: str, array: np.ndarray, quality: int | None = None) -> Path:
    path = tmp_path / name
    if quality is None:
        Image.fromarray(array).save(path)
    else:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=quality)
        path.write_bytes(buffer.getvalue())
    return path


def test_phash_cosine_matches_hamming(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    other = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    paths = [
        _photo(tmp_path, "a.png", smooth),
        _photo(tmp_path, "b.png", smooth),
        _photo(tmp_path, "c.jpg", smooth, quality=30),
        _photo(tmp_path, "d.png", other),
    ]
    descriptors = phash_descriptors(paths)
    assert descriptors.shape == (4, 64) and descriptors.dtype == np.float32
    assert set(np.unique(descriptors * 8)) <= {-1.0, 1.0}
    cosine = descriptors @ descriptors.T
    hamming = (descriptors[:, None, :] != descriptors[None, :, :]).sum(-1)
    np.testing.assert_allclose(cosine, 1 - 2 * hamming / 64, atol=1e-6)
    assert cosine[0, 1] == pytest.approx(1.0)
    assert cosine[0, 2] > cosine[0, 3]


def test_evaluation_report_for_a_model_and_its_baselines(built, tmp_path: Path) -> None:
    import torch

    from multigrain.evaluation.builtin.score import evaluate_builtin
    from multigrain.inference.calibrate import CalibrationResult, CalibrationRow
    from multigrain.models import MultiGrain

    output, _ = built
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=4).eval()
    calibration = CalibrationResult.from_table(
        [CalibrationRow(s, p, top1) for s, p, top1 in [(64, 1, 0.2), (64, 3, 0.3), (96, 3, 0.4)]],
        method="grid", num_images=10,
    )  # fmt: skip
    result = evaluate_builtin(
        model, output, model_name="random", resolution=64, device=torch.device("cpu"),
        report=tmp_path / "report", calibration=calibration,
    )  # fmt: skip
    methods = {row.method for row in result.copy_detection}
    assert methods == {"phash", "untrained", "trained"}
    overall = {r.method: r for r in result.copy_detection if r.family == r.strength == "all"}
    for row in overall.values():
        assert 0.0 < row.map <= 1.0 and 0.0 <= row.micro_ap <= 1.0
    # "trained" here is a random network seeded like the untrained one: identical scores
    assert overall["trained"].map == pytest.approx(overall["untrained"].map)
    assert set(result.instances) == methods
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 2 and "data:image/png;base64," in page
    assert (tmp_path / "report" / "copy_map.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert page.count("data:image/png;base64,") == 2
    assert "| all | strong |" in (tmp_path / "report" / "report.md").read_text()


def test_whitening_is_scored_with_its_untrained_control(built) -> None:
    """The control whitening is fitted as the model's: for identical networks, identical scores."""
    import torch

    from multigrain.data.listing import list_images
    from multigrain.evaluation.builtin.score import UNTRAINED_WHITENED, WHITENED, score_builtin
    from multigrain.inference.embed import embed_in_memory
    from multigrain.models import MultiGrain
    from multigrain.search.whitening import WhiteningInput, fit_whitening

    output, _ = built
    torch.manual_seed(0)  # the untrained network of score_builtin(seed=0) gets these weights
    model = MultiGrain(trunk="resnet18", num_classes=4).eval()
    photos = list_images(output / "train") + list_images(output / "train_unlabelled")
    cpu = torch.device("cpu")
    raw, _, _ = embed_in_memory(model, photos, resolution=64, device=cpu, normalise=False)
    whitening = fit_whitening(raw, dim=12, shrinkage=0.1, input=WhiteningInput.UNIT_WITH_ONE)
    result, _ = score_builtin(
        model, output, model_name="random", resolution=64, device=torch.device("cpu"),
        whitening=whitening,
    )  # fmt: skip
    rows = {(r.method, r.family, r.strength): r for r in result.copy_detection}
    assert {method for method, _, _ in rows} == {
        "phash", "untrained", "trained", UNTRAINED_WHITENED, WHITENED
    }  # fmt: skip
    for (method, family, strength), row in rows.items():
        if method == WHITENED:
            control = rows[UNTRAINED_WHITENED, family, strength]
            assert row.map == pytest.approx(control.map, abs=1e-6)
    assert result.instances[WHITENED].map == pytest.approx(
        result.instances[UNTRAINED_WHITENED].map, abs=1e-6
    )
    # whitening changes the ranking: the whitened rows are not the raw ones
    raw, whitened = rows["trained", "all", "all"], rows[WHITENED, "all", "all"]
    assert (raw.map, raw.micro_ap) != (whitened.map, whitened.micro_ap)


def test_control_whitening_repeats_the_fit() -> None:
    import torch

    from multigrain.evaluation.builtin.score import control_whitening
    from multigrain.search.whitening import fit_whitening

    generator = torch.Generator().manual_seed(0)
    first = torch.nn.functional.normalize(torch.randn(40, 16, generator=generator), dim=1)
    other = torch.nn.functional.normalize(torch.randn(30, 16, generator=generator), dim=1)
    whitening = fit_whitening(first, dim=10, power=0.25, shrinkage=0.2)
    control = control_whitening(whitening, other)
    expected = fit_whitening(other, dim=10, power=0.25, shrinkage=0.2)
    assert control.kept_dim == 10 and control.output_dim == 11  # + the constant
    assert control.fitted_on["power"] == 0.25 and control.fitted_on["shrinkage"] == 0.2
    torch.testing.assert_close(control.projection, expected.projection)
    # fewer descriptors than d + 1: d shrinks to the rank rather than failing
    assert control_whitening(whitening, other[:6]).kept_dim == 5


def test_demo_pipeline_on_the_built_benchmark(built, tmp_path: Path) -> None:
    """`multigrain demo` end to end at toy size: every step runs and the report is complete."""
    import json

    from multigrain.experiments.builtin_demo import DemoSettings, run_builtin_demo

    output, _ = built
    settings = DemoSettings(
        steps=2, batch_size=12, train_resolution=48, test_resolution=64,
        calibration_resolutions=(48,), calibration_exponents=(1.0, 3.0), workers=0,
        whitening_dim=16,
    )  # fmt: skip
    summary = run_builtin_demo(output_dir=tmp_path / "demo", data_root=output, settings=settings)
    assert summary.steps == 2 and summary.exponent in (1.0, 3.0)
    assert 0.0 <= summary.index_recall_at_1 <= 1.0
    assert set(summary.headline) == {
        "phash", "untrained", "trained", "untrained+whitening", "trained+whitening"
    }  # fmt: skip
    assert "held-out top-1" in summary.headline["trained"]
    # the comparison on the held-out photo packages (mate-backgrounds, lomiri-wallpapers*)
    methods = [row.method for row in summary.heldout_packages]
    assert methods[:3] == ["pHash (16x16)", "PDQ", "this demo's model (p*, whitening)"]
    assert all(0.0 < float(row.map) <= 1.0 for row in summary.heldout_packages)
    folder = tmp_path / "demo"
    for name in ("report.html", "report.md", "report.json", "calibration.png", "copy_map.png"):
        assert (folder / name).stat().st_size > 0, name
    saved = json.loads((folder / "report.json").read_text())
    assert saved["summary"]["steps"] == 2 and saved["result"]["resolution"] == 64
    markdown = (folder / "report.md").read_text()
    assert markdown.startswith("# multigrain demo") and "| copy mAP (strong) |" in markdown
    assert "photo packages that neither model trained on" in markdown
    assert (folder / "index" / "index.faiss").exists() or any((folder / "index").iterdir())


def test_cli_report_plots_the_stored_calibration(built, tmp_path: Path) -> None:
    """`evaluate --benchmark builtin --report` adds the p*/s plot when the checkpoint has one."""
    import torch
    from typer.testing import CliRunner

    import multigrain.cli.evaluate  # noqa: F401  (registers evaluate)
    from multigrain.cli.app import app
    from multigrain.inference.calibrate import CalibrationResult, CalibrationRow
    from multigrain.models import MultiGrain
    from multigrain.models.checkpoint import save_checkpoint
    from multigrain.search.whitening import fit_whitening

    output, _ = built
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(
        checkpoint,
        {"model_state": model.state_dict(), "architecture": model.architecture(),
         "classes": ["a", "b", "c"]},
    )  # fmt: skip
    CalibrationResult.from_table(
        [CalibrationRow(48, 3.0, 0.5), CalibrationRow(48, 4.0, 0.6)], method="grid", num_images=4
    ).save(tmp_path / "model.pt.calibration.json")
    fit_whitening(
        torch.nn.functional.normalize(torch.randn(20, model.embedding_dim), dim=1), dim=8
    ).save(tmp_path / "whitening.pt")
    args = ["evaluate", "--benchmark", "builtin", "--root", str(output), "-c", str(checkpoint),
            "-s", "48", "--report", str(tmp_path / "report"),
            "--whitening", str(tmp_path / "whitening.pt")]  # fmt: skip
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "report" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "report" / "report.md").read_text()
    # p* of the stored calibration (4 at s=48) is what the model was evaluated with
    assert "p = 4" in markdown
    # --whitening adds the whitened model and its untrained control
    assert "| trained+whitening |" in markdown and "| untrained+whitening |" in markdown
