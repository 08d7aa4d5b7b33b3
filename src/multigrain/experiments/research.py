"""The paper's research questions on a Fashion-MNIST design where the effects can show.

Questions (each a difference of the reference model, joint: lambda = 0.5, m = 3, p = 3,
and one variant that changes one setting; claims.py gives the paper's figures):

- RQ1: classification only (lambda = 1) and retrieval only (lambda = 0) vs joint;
- RQ2: repeated augmentations m = 3 vs m = 1 at the same number of images processed
  (same steps and batch; with m = 1 no batch holds a positive pair, so the margin loss is
  idle: the paper's "uniform batches" baseline);
- RQ3: GeM exponent in training p = 3 vs p = 1 (average pooling);
- RQ4 (test time, on the joint models): s x p grid; p* per s by top-1 and by retrieval;
- whitening (test time, joint models): copy mAP with the whitened descriptor, and top-1
  read from that stored vector (search.classifier_fold.descriptor_classifier).

Design (FULL in variants.py), chosen so that the claimed effects can appear: a small
labelled set seen many times, and a last feature map where pooling matters.
- Images: 800 training images (80 a class, seeded, class-balanced) from Fashion-MNIST's
  training split; 2,000 test images (200 a class) from its test split; 2,000 more training
  images, disjoint from the 800, fit the whitening (study_sets.py).
- Model: ResNet-18 with the small-input stem at s = 56 px: a 7 x 7 last map (4 x 4 at 32
  px in the earlier study, where p had little to pool over).
- Training: 256 steps x 48 images = 12,288 images processed, each training image about
  15 times (5 passes of its sources x 3 copies with m = 3, 15 passes with m = 1); SGD lr
  0.02 (the paper's 0.2 per 512, scaled), 64 warm-up steps (a quarter: with 24, the
  joint model's classification loss jumped from 2.2 to 5.1 at the end of the warm-up,
  though its top-1 after 96 steps was the same, 0.37 vs 0.36 on 300 test images; the
  earlier study needed ~60 for the small stem to learn), cosine to 0, weight decay 5e-4,
  bf16 autocast where the CPU has it.
  3 seeds per variant (0, 1, 2: initialisation, order and augmentations); the image sets
  stay fixed.
- Figures: test top-1 on the 2,000 clean test images; copy retrieval mAP: each test image
  augmented with the training recipe queries the 2,000 clean ones (one positive, so mAP
  is the mean reciprocal rank). This is what the paper's instance/copy claims speak to
  (Copydays "strong": distorted copies of an image against many others, and the margin
  loss's positives are augmentations of one image); class-level retrieval would measure
  the classification job a second time.
- Learning curves: held-out top-1 and copy mAP on the first 500 test images after every
  eighth of training (snapshots). A run counts as converged on a figure when max - min
  over the checkpoints of the last quarter (steps 192, 224, 256) is <= 0.02.
- RQ4: the joint models on the first 1,000 test images at s = 56 (training), 72, 96, 112
  and p = 1, 2, 3, 4, 5, 6, 8.
- Statistics (statistics.py): mean over seeds with the spread (max - min); a 95 %
  two-level bootstrap interval of each difference (seeds of each variant resampled, test
  images resampled and paired between the variants); verdict "agrees" / "disagrees" when
  the interval excludes 0 on the paper's / the other side, else "not separated at this
  scale".

Cost on this 2-core machine: training measured at 1.45 s a step (33 images/s at 56 px,
bf16 autocast) with the machine otherwise idle, so ~380 s a run with its checkpoints;
scoring estimated from its CPU time relative to training's (an image embedded at 56 px
costs 1/5.6 of a training image): ~65 s a run (curves and test images), ~115 s more per
joint run (RQ4 grid, whitening fit). 15 x 445 + 3 x 115 = ~7,000 s, ~2 h of 2 idle cores.
Shared with other workers at nice 19 the first runs went 8x slower (3.5-4.5 images/s).

Resuming: every run lives in ``<output>/runs/<variant>/seed<k>/`` and is resumable
stage by stage (study_runs.py); a rerun with the same output folder skips finished runs
and continues a half-done one from its checkpoint. Runs go seed by seed (all variants
with seed 0 first), so a partial study already compares every variant. ``--quick``
runs the whole pipeline at toy size (QUICK): it checks the code, not the claims. ``--long``
(LONG) is FULL with 512 steps and the curves on all 2,000 test images, for the runs of FULL
that were still moving in their last quarter (``--long --steps N``: N steps instead).
``--long --schedule step`` trains on the paper's schedule instead of the cosine: the
learning rate x 0.1 after 1/4, 1/2 and 3/4 of the steps (its epochs 30, 60 and 90 of 120),
the same warm-up first; its last quarter runs at 1/1000 of the peak rate, so a flat last
quarter there says that the schedule has ended, while the studies at 256, 512 and 1,024
cosine steps say how far the figures still move when training is longer. A finished run
of another step count or schedule in the output folder is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from multigrain.data.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT, FashionMNISTImages
from multigrain.experiments.research_report import write_report
from multigrain.experiments.results import RESULT_NAME, RunResult, RunScores
from multigrain.experiments.study_analysis import Analysis, analyse
from multigrain.experiments.study_comparison import read_study
from multigrain.experiments.study_runs import run_one
from multigrain.experiments.study_sets import study_sets
from multigrain.experiments.variants import FULL, LONG, QUICK, VARIANTS, Scale, Variant
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)


def run_experiments(
    *,
    output_dir: Path,
    scale: Scale = FULL,
    fashion_mnist_root: Path = DEFAULT_FASHION_MNIST_ROOT,
    finished_only: bool = False,
    against: Sequence[Path] = (),
) -> Analysis:
    """Train and score every variant x seed (skipping finished runs), write the report.

    ``finished_only``: train nothing; report on the runs finished so far (a comparison
    appears once both of its variants have a run). ``against``: other studies' folders,
    whose answers the report sets beside these (research_report.against_section).
    """
    for other in against:
        read_study(other)  # refused before hours of training, not after
    if scale.steps % scale.curve_points:
        raise MultiGrainError(
            f"{scale.steps} steps do not split into {scale.curve_points} curve points"
        )
    folders = {
        (variant, seed): output_dir / "runs" / variant.slug / f"seed{seed}"
        for seed in scale.seeds
        for variant in VARIANTS
    }
    if finished_only and not any((f / RESULT_NAME).exists() for f in folders.values()):
        raise MultiGrainError(
            f"--finished-only: no finished run under {output_dir / 'runs'} (a run is finished "
            f"when its {RESULT_NAME} is written); check the folder, or train the runs with the "
            "same command without --finished-only"
        )
    sets = study_sets(
        FashionMNISTImages(fashion_mnist_root, split="train"),
        FashionMNISTImages(fashion_mnist_root, split="test"),
        output_dir / "data" / "train",
        train_per_class=scale.train_per_class,
        whitening_per_class=scale.whitening_per_class,
        test_per_class=scale.test_per_class,
    )
    runs: list[RunResult] = []
    scores: dict[Variant, list[RunScores]] = {}
    for (variant, seed), folder in folders.items():
        if finished_only and not (folder / RESULT_NAME).exists():
            continue
        print(f"{variant.name}, seed {seed}", flush=True)
        reference = variant is VARIANTS[0]
        result, run_scores = run_one(variant, seed, scale, sets, folder, reference=reference)
        print(
            f"  top-1 {result.top1:.3f}, copy mAP {result.copy_map:.3f}, "
            f"trained in {result.train_seconds:.0f} s",
            flush=True,
        )
        runs.append(result)
        scores.setdefault(variant, []).append(run_scores)
    analysis = analyse(scale, runs, scores)
    write_report(analysis, output_dir, against=against)
    return analysis


__all__ = ["FULL", "LONG", "QUICK", "Scale", "Variant", "VARIANTS", "run_experiments"]
