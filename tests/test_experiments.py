"""The research study: its statistics against hand computations, its image sets, and
`multigrain experiments --quick` end to end, including skipping and resuming runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from multigrain.experiments.statistics import (
    Interval,
    Verdict,
    best_exponent_interval,
    convergence,
    difference_interval,
    verdict,
)
from multigrain.experiments.study_sets import balanced_indices


def test_interval_of_a_constant_difference_is_that_constant() -> None:
    """Every seed alike (seeds are resampled per variant, unpaired), a constant per image."""
    a = np.array([[0.7, 0.2, 0.9], [0.7, 0.2, 0.9]])
    interval = difference_interval(a, a - 0.25, samples=500)
    assert interval.difference == pytest.approx(0.25)
    assert interval.low == pytest.approx(0.25) and interval.high == pytest.approx(0.25)


def test_interval_over_images_matches_the_enumerated_bootstrap() -> None:
    """One seed, two images, A - B per image = (1, 0): a resample of 2 images has mean 1,
    1/2 or 0 with probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1]."""
    interval = difference_interval([[1.0, 0.0]], [[0.0, 0.0]], samples=4000, seed=3)
    assert interval.difference == 0.5
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_interval_over_seeds_matches_the_enumerated_bootstrap() -> None:
    """Seeds 0.6 and 0.8 on every image vs 0.5: resampled seed means 0.6, 0.7, 0.8 with
    probabilities 1/4, 1/2, 1/4, so the interval of the difference is [0.1, 0.3]."""
    a = np.array([[0.6] * 5, [0.8] * 5])
    interval = difference_interval(a, np.full((2, 5), 0.5), samples=4000, seed=1)
    assert interval.difference == pytest.approx(0.2)
    assert interval.low == pytest.approx(0.1) and interval.high == pytest.approx(0.3)


def test_paired_seeds_cancel_the_seed_spread_of_two_readings_of_one_run() -> None:
    """Two readings of the same models (whitened vs raw) that differ by 0.1 on every image:
    paired, the seeds' spread cancels ([0.1, 0.1]); unpaired it would not."""
    a = np.array([[0.6] * 5, [0.8] * 5])
    paired = difference_interval(a, a - 0.1, samples=2000, seed=1, paired_seeds=True)
    assert paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    unpaired = difference_interval(a, a - 0.1, samples=2000, seed=1)
    assert unpaired.low == pytest.approx(-0.1) and unpaired.high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="paired seeds"):
        difference_interval(a, a[:1], paired_seeds=True)


def test_interval_over_many_images_has_the_normal_width() -> None:
    """Paired 0/1 differences on 4000 images: half-width ~ 1.96 sd / sqrt(N)."""
    rng = np.random.default_rng(0)
    a = (rng.random((1, 4000)) < 0.8).astype(float)
    b = (rng.random((1, 4000)) < 0.7).astype(float)
    interval = difference_interval(a, b, samples=3000)
    half = 1.96 * (a - b).std() / np.sqrt(4000)
    assert (interval.high - interval.low) / 2 == pytest.approx(half, rel=0.1)
    assert interval.low < interval.difference < interval.high


@pytest.mark.parametrize(
    ("low", "high", "sign", "expected"),
    [
        (0.01, 0.05, +1, Verdict.AGREES),
        (0.01, 0.05, -1, Verdict.DISAGREES),
        (-0.05, -0.01, -1, Verdict.AGREES),
        (-0.05, -0.01, +1, Verdict.DISAGREES),
        (-0.01, 0.05, +1, Verdict.NOT_SEPARATED),
        (0.0, 0.0, +1, Verdict.NOT_SEPARATED),
    ],
)
def test_verdict(low: float, high: float, sign: int, expected: Verdict) -> None:
    assert verdict(Interval((low + high) / 2, low, high), sign) is expected


def test_verdict_words() -> None:
    assert [v.value for v in Verdict] == ["agrees", "disagrees", "not separated at this scale"]


def test_best_exponent_shift_of_a_clear_grid() -> None:
    """p* = 1 at the first resolution and 4 at the second on every image and seed."""
    scores = np.zeros((3, 2, 3, 50))  # seeds, resolutions, exponents (1, 3, 4), images
    scores[:, 0, 0] = 1.0
    scores[:, 1, 2] = 1.0
    shift = best_exponent_interval(scores, (1.0, 3.0, 4.0), low_index=0, high_index=1, samples=300)
    assert (shift.difference, shift.low, shift.high) == (3.0, 3.0, 3.0)


def test_convergence_reads_the_last_quarter_only() -> None:
    steps = [25, 50, 75, 100]
    flat = convergence(steps, [0.1, 0.5, 0.80, 0.81], total_steps=100, tolerance=0.02)
    assert flat.flat and flat.change == pytest.approx(0.01)
    moving = convergence(steps, [0.1, 0.5, 0.70, 0.81], total_steps=100, tolerance=0.02)
    assert not moving.flat and moving.change == pytest.approx(0.11)
    assert not convergence([50, 100], [0.8, 0.8], total_steps=100, tolerance=0.02).flat


def test_seconds_of_an_interrupted_stage_are_kept_and_added_to(tmp_path: Path) -> None:
    from multigrain.experiments.study_runs import seconds_added_to

    path = tmp_path / "run" / "score_seconds.txt"
    with pytest.raises(KeyboardInterrupt), seconds_added_to(path):
        time.sleep(0.2)
        raise KeyboardInterrupt
    first = float(path.read_text())
    assert first >= 0.2
    with seconds_added_to(path):
        time.sleep(0.2)
    assert float(path.read_text()) >= first + 0.2


def test_balanced_indices_are_balanced_seeded_and_disjoint() -> None:
    labels = [i % 3 for i in range(60)]
    first = balanced_indices(labels, 4, seed=0)
    assert first == balanced_indices(labels, 4, seed=0) != balanced_indices(labels, 4, seed=1)
    assert [labels[i] for i in first[:3]] == [0, 1, 2]  # every prefix is balanced
    assert sorted(labels[i] for i in first) == [0] * 4 + [1] * 4 + [2] * 4
    other = balanced_indices(labels, 16, seed=5, exclude=first)
    assert not set(other) & set(first)
    with pytest.raises(ValueError):
        balanced_indices(labels, 17, seed=5, exclude=first)


@pytest.mark.slow
def test_experiments_quick_answers_every_question_and_resumes(
    tmp_path: Path, fashion_mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import multigrain.cli.demo  # noqa: F401  (registers experiments)
    import multigrain.experiments.study_runs as study_runs
    from multigrain.cli.app import app

    folder = tmp_path / "experiments"
    args = ["experiments", "--quick", "-o", str(folder)]
    args += ["--fashion-mnist-root", str(fashion_mnist_root)]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    saved = json.loads((folder / "experiments.json").read_text())
    assert len(saved["runs"]) == 5
    assert {(c["question"], c["metric"]) for c in saved["comparisons"]} == {
        (q, m) for q in ("RQ1", "RQ2", "RQ3") for m in ("test top-1", "copy mAP")
    }
    assert len(saved["comparisons"]) == 8
    verdicts = {"agrees", "disagrees", "not separated at this scale"}
    for comparison in saved["comparisons"]:
        difference = comparison["difference"]
        assert difference["low"] <= difference["difference"] <= difference["high"]
        assert comparison["verdict"] in verdicts
    assert [g["metric"] for g in saved["rq4"]] == ["test top-1", "copy mAP"]
    assert np.array(saved["rq4"][0]["means"]).shape == (2, 2)  # resolutions x exponents
    assert saved["whitening"]["top1_verdict"] == "agrees"  # the fold is exact
    for run in saved["runs"]:
        assert [p["step"] for p in run["curve"]] == [2, 4]
    markdown = (folder / "experiments.md").read_text()
    for text in ("## Answers", "## Convergence", "RQ1", "RQ4", "whitening"):
        assert text in markdown, text
    assert (folder / "experiments.html").read_text().count("data:image/png;base64,") == 2

    # a rerun trains nothing: every run is finished
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study_runs, "train", refuse)
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert json.loads((folder / "experiments.json").read_text())["runs"] == saved["runs"]

    # --finished-only reports on the finished runs and trains nothing
    run_folder = folder / "runs" / "retrieval-only" / "seed0"
    (run_folder / "result.json").unlink()
    outcome = CliRunner().invoke(app, [*args, "--finished-only"])
    assert outcome.exit_code == 0, outcome.output
    partial = json.loads((folder / "experiments.json").read_text())
    assert len(partial["runs"]) == 4 and len(partial["comparisons"]) == 6

    # --against sets another study's answers beside these; a folder without a report is
    # refused before any training
    outcome = CliRunner().invoke(app, [*args, "--finished-only", "--against", str(folder)])
    assert outcome.exit_code == 0, outcome.output
    beside = json.loads((folder / "experiments.json").read_text())
    # comparisons, RQ4 x 2 metrics, whitening
    assert [len(other["cells"]) for other in beside["against"]] == [6 + 4 + 2]
    assert "## Against" in (folder / "experiments.md").read_text()
    assert [r["variant"] for r in beside["convergence"]] == [r["variant"] for r in beside["runs"]]
    outcome = CliRunner().invoke(app, [*args, "--against", str(tmp_path / "nowhere")])
    assert "no report to compare with" in str(outcome.exception)  # main() prints it

    # a run without its result resumes from its checkpoint and gives the same figures
    from multigrain.training.loop import train

    calls: list[bool] = []

    def counted(config: object, *, resume: bool) -> object:
        calls.append(resume)
        return train(config, resume=resume)  # type: ignore[arg-type]

    monkeypatch.setattr(study_runs, "train", counted)

    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert calls == [True]
    again = json.loads((folder / "experiments.json").read_text())["runs"]
    (before,) = [r for r in saved["runs"] if r["variant"] == "retrieval-only"]
    (after,) = [r for r in again if r["variant"] == "retrieval-only"]
    assert (after["top1"], after["copy_map"], after["curve"]) == (
        before["top1"], before["copy_map"], before["curve"]
    )  # fmt: skip
    # the resumed run's costs add to what the first session spent, not replace it
    assert after["train_seconds"] >= before["train_seconds"]
    assert after["score_seconds"] > before["score_seconds"]

    # finished runs of another schedule are refused, not mixed into this study's report
    from dataclasses import replace

    from multigrain.experiments.research import QUICK, run_experiments
    from multigrain.runtime.errors import MultiGrainError

    with pytest.raises(
        MultiGrainError,
        match="finished with 4 training steps on a cosine schedule, this study runs 8 on a cosine",
    ):
        run_experiments(
            output_dir=folder, scale=replace(QUICK, steps=8),
            fashion_mnist_root=fashion_mnist_root, finished_only=True,
        )  # fmt: skip
    with pytest.raises(MultiGrainError, match="this study runs 4 on a step one"):
        run_experiments(
            output_dir=folder, scale=replace(QUICK, schedule="step"),
            fashion_mnist_root=fashion_mnist_root, finished_only=True,
        )  # fmt: skip


def test_finished_only_without_finished_runs_names_the_folder(tmp_path: Path) -> None:
    """An empty or mistyped folder is an error naming it, not a report of empty tables."""
    from multigrain.experiments.research import run_experiments
    from multigrain.runtime.errors import MultiGrainError

    empty = tmp_path / "no-runs"
    (empty / "runs" / "joint" / "seed0").mkdir(parents=True)  # started, not finished
    with pytest.raises(MultiGrainError, match="no finished run under .*no-runs.runs"):
        run_experiments(output_dir=empty, fashion_mnist_root=tmp_path, finished_only=True)
    assert not (empty / "experiments.md").exists()


def _study(steps: int, rq1_top1: tuple[float, float, float], flat: list[bool]) -> dict:
    difference, low, high = rq1_top1
    verdict = "agrees" if low > 0 else "not separated at this scale"
    interval = {"difference": 0.0, "low": 0.0, "high": 0.0}
    return {
        "scale": {"steps": steps, "convergence_tolerance": 0.02},
        "comparisons": [
            {
                "question": "RQ1",
                "other": "classification only (λ=1)",
                "metric": "test top-1",
                "difference": {"difference": difference, "low": low, "high": high},
                "verdict": verdict,
            },
        ],  # fmt: skip
        "rq4": [
            {
                "metric": "copy mAP",
                "exponent_shift": interval,
                "exponent_verdict": "agrees",
                "gain": interval,
                "gain_verdict": "disagrees",
            },
        ],  # fmt: skip
        "whitening": None,
        "convergence": [
            {"variant": name, "seed": 0, "top1_flat": f, "copy_map_flat": True}
            for name, f in zip(("joint", "m1", "p1"), flat, strict=False)
        ],
        "runs": [
            {"variant": "joint", "seed": 0, "top1": 0.5 + steps / 5120, "copy_map": steps / 2560}
        ]
        + [{"variant": "m1", "seed": 0, "top1": 0.81, "copy_map": 0.39}] * (steps > 512),
    }


def test_against_sets_each_answer_beside_the_other_studys() -> None:
    from multigrain.experiments.study_comparison import against_section

    short = _study(256, (0.01, -0.01, 0.03), [True, False, False])
    long = _study(512, (0.05, 0.02, 0.08), [True, True, True])
    lines = against_section(long, [(short, "the short study")])
    text = "\n".join(lines)
    assert "256 steps: 1 of 3 runs flat on both figures; 512 steps: 3 of 3" in text
    (rq1,) = [line for line in lines if line.startswith("| RQ1")]
    assert rq1.split(" | ")[1:] == [
        "+0.010 [-0.010, +0.030]", "not separated at this scale",
        "+0.050 [+0.020, +0.080]", "agrees", "yes |",
    ]  # fmt: skip
    (gain,) = [line for line in lines if "best larger s" in line]
    assert gain.endswith("| disagrees | no |")
    # three lengths, given in any order: columns shortest first; the verdict changed if
    # any two differ
    longest = _study(1024, (0.06, 0.03, 0.09), [False, True, True])
    lines = against_section(longest, [(long, "512"), (short, "256")])
    (rq1,) = [line for line in lines if line.startswith("| RQ1")]
    assert rq1.split(" | ")[1:] == [
        "+0.010 [-0.010, +0.030]", "not separated at this scale", "+0.050 [+0.020, +0.080]",
        "agrees", "+0.060 [+0.030, +0.090]", "agrees", "yes |",
    ]  # fmt: skip
    # each run's final figures at every length, the newest study's runs first
    (joint,) = [line for line in lines if line.startswith("| joint seed 0")]
    assert (
        joint == "| joint seed 0 | 0.550 / 0.600 / 0.700 | 0.100 / 0.200 / 0.400 | yes / yes / no |"
    )
    (m1,) = [line for line in lines if line.startswith("| m1 seed 0")]
    assert m1 == "| m1 seed 0 | — / — / 0.810 | — / — / 0.390 | — / — / yes |"
    # an answer only one study has is shown with a dash, not dropped
    del long["comparisons"][0]
    (rq1,) = [line for line in against_section(long, [(short, "x")]) if line.startswith("| RQ1")]
    assert rq1.endswith("| — | — | — |")


def test_long_is_full_on_twice_the_steps_with_curves_on_every_test_image() -> None:
    from multigrain.experiments.variants import FULL, LONG

    assert LONG.steps == 2 * FULL.steps and LONG.curve_images == 10 * LONG.test_per_class
    assert LONG.steps % LONG.curve_points == 0
    assert (LONG.seeds, LONG.lr, LONG.batch_size) == (FULL.seeds, FULL.lr, FULL.batch_size)


@pytest.mark.parametrize("num_repeats", [3, 1])
def test_step_schedule_drops_at_the_papers_quarters_for_every_variant(
    tmp_path: Path, num_repeats: int
) -> None:
    """The paper's schedule (x 0.1 at its epochs 30, 60, 90 of 120) on the study's steps:
    the milestones are given in epochs, which m changes, yet every variant drops at the same
    steps, counted with the epoch the training loop's sampler makes."""
    from dataclasses import replace

    from multigrain.data.samplers import RepeatedAugmentationSampler
    from multigrain.experiments.study_runs import train_config
    from multigrain.experiments.study_sets import StudySets
    from multigrain.experiments.variants import LONG, VARIANTS, Variant
    from multigrain.training.optim import learning_rate_at

    scale = replace(LONG, steps=512, schedule="step")
    variant = Variant("v", VARIANTS[0].question, num_repeats=num_repeats)
    sets = StudySets(tmp_path, None, None)  # type: ignore[arg-type]  # only the folder is read
    config = train_config(variant, 0, scale, sets, tmp_path / "run")
    sampler = RepeatedAugmentationSampler(
        scale.train_per_class * 10, batch_size=scale.batch_size, num_repeats=num_repeats
    )

    def rate(step: int) -> float:
        return learning_rate_at(
            step, base_lr=config.lr, steps_per_epoch=len(sampler), total_steps=scale.steps,
            schedule=config.schedule, lr_steps=config.lr_steps, gamma=config.lr_gamma,
            warmup_epochs=config.warmup_epochs,
        )  # fmt: skip

    assert rate(scale.warmup_steps) == pytest.approx(scale.lr)
    for quarter in range(4):
        start = quarter * 128 + (scale.warmup_steps if quarter == 0 else 0)
        for step in (start, quarter * 128 + 127):
            assert rate(step) == pytest.approx(scale.lr * 0.1**quarter), (quarter, step)
    # cosine, the earlier studies' schedule, is unchanged: no milestones are set
    cosine = train_config(variant, 0, replace(scale, schedule="cosine"), sets, tmp_path / "c")
    assert (cosine.schedule.value, cosine.lr_steps) == ("cosine", [30, 60, 90])


def test_against_names_a_step_schedule_study_apart_from_a_cosine_one_of_its_length() -> None:
    from multigrain.experiments.study_comparison import against_section

    cosine = _study(512, (0.05, 0.02, 0.08), [True, True, True])
    step = _study(512, (0.01, -0.01, 0.03), [True, True, True])
    step["scale"]["schedule"] = "step"
    lines = against_section(step, [(cosine, "cosine")])
    text = "\n".join(lines)
    assert "cosine (512 steps), this study (512 steps, step lr)" in text
    assert "| 512 steps [95 % CI] | verdict | 512 steps, step lr [95 % CI] | verdict |" in text
    (rq1,) = [line for line in lines if line.startswith("| RQ1")]
    assert rq1.split(" | ")[1:3] == ["+0.050 [+0.020, +0.080]", "agrees"]
    # the per-run table names each study whole ("steps" is not said twice)
    assert "at the end of training, at 512 steps / 512 steps, step lr, and whether" in text
    assert "| run | top-1 at 512 steps / 512 steps, step lr |" in text
    cosine_only = "\n".join(against_section(cosine, [(step | {"scale": {"steps": 256}}, "s")]))
    assert "at the end of training, at 256 / 512 steps, and whether" in cosine_only


def test_experiments_schedule_is_checked_before_any_training() -> None:
    from typer.testing import CliRunner

    import multigrain.cli.demo  # noqa: F401  (registers experiments)
    from multigrain.cli.app import app

    outcome = CliRunner().invoke(app, ["experiments", "--schedule", "step"])
    assert "--schedule step is a variant of the --long study" in str(outcome.exception)
    outcome = CliRunner().invoke(app, ["experiments", "--long", "--schedule", "linear"])
    assert "--schedule 'linear' is not one of: step, cosine" in str(outcome.exception)
